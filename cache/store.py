"""Former home of the cache API, kept so that ``woundscore.cache.store`` imports keep working.

Import from ``woundscore.cache`` instead; the code lives in layout, writer, parts, guarded, read
and merge.
"""

from woundscore.cache import *  # noqa: F401,F403
from woundscore.cache import __all__  # noqa: F401
