"""The one exception root: every error woundscore raises on purpose derives from it.

Each command line catches ``WoundscoreError`` once and turns it into ``Error: <message>`` with a
non-zero exit code; anything else is a bug and keeps its traceback.
"""


class WoundscoreError(Exception):
    """Base of woundscore's named errors; the message names the file, row or value at fault.

    ``exit_code`` is what a command exits with (1; a subclass may say otherwise, e.g. 3 for a
    fine-tune whose loss stayed NaN)."""

    exit_code: int = 1
