"""`wound-serve MODEL_DIR`: the scoring service under uvicorn (README.md, "The scoring service")."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from woundscore.classify.serve import DEFAULT_MAX_BATCH, DEFAULT_MAX_BYTES, DEFAULT_MAX_WAIT_MS

TOKEN_ENV = "WOUNDSCORE_API_TOKEN"


def read_token(token_file: str | None) -> str | None:
    """The bearer token from ``token_file`` (first line, stripped) or $WOUNDSCORE_API_TOKEN; None: open."""
    if token_file:
        try:
            tok = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise click.ClickException(f"{token_file}: cannot read the token file ({e.strerror or e})") from None
        if not tok:
            raise click.ClickException(f"{token_file}: the token file is empty")
        return tok
    return os.environ.get(TOKEN_ENV, "").strip() or None


def _graceful_server_class():
    import uvicorn

    class GracefulServer(uvicorn.Server):
        """uvicorn re-raises a caught SIGTERM after its graceful shutdown (the process then dies
        of the signal); the service's contract is exit 0 after finishing in-flight requests."""

        def handle_exit(self, sig, frame) -> None:  # type: ignore[no-untyped-def]
            super().handle_exit(sig, frame)
            self._captured_signals.clear()

    return GracefulServer


@click.command("wound-serve")
@click.version_option(package_name="woundscore")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind (0.0.0.0 exposes the service to the network: set a token).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--max-batch", type=click.IntRange(min=1), default=DEFAULT_MAX_BATCH, show_default=True,
              help="Most images per encoder forward (1: no micro-batching).")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=DEFAULT_MAX_WAIT_MS, show_default=True,
              help="Longest wait, once the forward is free, for requests already received and still being "
                   "decoded to join the batch (never for requests not yet sent: an idle server scores a "
                   "lone image at once).")
@click.option("--max-bytes", type=click.IntRange(min=1), default=DEFAULT_MAX_BYTES, show_default=True,
              help="Largest request body accepted (413 beyond, checked while reading).")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=str), default=None,
              help=f"File holding the bearer token that scoring requests must send [default: ${TOKEN_ENV}, "
                   "else no token].")
@click.option("--encoder", default=None,
              help="Hub id or local checkpoint folder of the encoder [default: MODEL_DIR's recorded one].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def main(model_dir: str, host: str, port: int, max_batch: int, max_wait_ms: float, max_bytes: int,
         token_file: str | None, encoder: str | None, device: str) -> None:
    """Serve MODEL_DIR (an MLP, probe or fine-tune folder): POST /v1/score, GET /v1/model,
    /healthz, /readyz, and the OpenAPI schema at /docs and /openapi.json.

    The model and encoder are loaded once at start (/readyz is 503 until then). SIGTERM or Ctrl-C
    stops accepting connections, lets in-flight requests finish, and exits 0.

    \b
    Example:
        wound-serve models/mlp --encoder ./medsiglip-448
        WOUNDSCORE_API_TOKEN=... wound-serve models/mlp --host 0.0.0.0 --port 8080

    \b
    Exit codes: 0 stopped by a signal; 1 the model or encoder could not be loaded, or the port
    cannot be bound; 2 usage error.
    """
    import uvicorn

    from woundscore.classify.serve import create_app

    _GracefulServer = _graceful_server_class()
    token = read_token(token_file)
    failed: list[BaseException] = []
    server: uvicorn.Server | None = None

    def on_load_error(exc: BaseException) -> None:
        failed.append(exc)
        if server is not None:
            server.should_exit = True

    app = create_app(model_dir, encoder=encoder, device=device, max_batch=max_batch, max_wait_ms=max_wait_ms,
                     max_bytes=max_bytes, token=token, on_load_error=on_load_error)
    config = uvicorn.Config(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=60,
                            server_header=False)
    server = _GracefulServer(config)
    server.run()
    if failed:
        click.echo(f"Error: cannot load {model_dir}: {failed[0]}", err=True)
        sys.exit(1)
    if not server.started:  # e.g. the port is taken (uvicorn logged why)
        sys.exit(1)
