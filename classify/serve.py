"""The scoring service: ``create_app(model_dir) -> FastAPI`` (README.md, "The scoring service").

- The head and the encoder are loaded once, in a worker thread started by the app's lifespan:
  ``/healthz`` answers at once, ``/readyz`` and ``/v1/score`` are 503 until the model is loaded.
- ``POST /v1/score``: a multipart upload (field ``file``) or a raw image body (``image/*`` or
  ``application/octet-stream``) -> the predict contract (classify.scorer) + ``summary`` (the
  assistant's block, classify.prompt). The body is read into memory chunk by chunk and refused
  with 413 as soon as it passes ``max_bytes``; multipart is parsed in memory (python-multipart's
  parser, not Starlette's ``form()``, which spools parts over 1 MB to a temporary file), so nothing
  from a request body is written to disk or logged.
- Decode AND preprocess (pad, resize, normalise: ``WoundScorer.prepare``, the encoder's one
  preprocessing) run in a pool of decode threads, one request each; the forward thread gets only
  the stacked pixel tensors, so preprocessing overlaps the forward as in ``wound-embed run``.
- Dynamic micro-batching: prepared images wait in an asyncio queue; a batcher task runs ONE
  encoder forward at a time in a single worker thread (the event loop never blocks on it). The
  rule: as soon as the forward thread is free, a batch takes every image already queued (up to
  ``max_batch``) and waits -- at most ``max_wait_ms`` -- only for requests already received and
  still being decoded; it never waits for requests that have not arrived. An idle server thus
  runs a lone request at once (batch 1 costs the same as with micro-batching off), and under load
  the images that queued during one forward form the next batch. An image's answer does not
  depend on its batch (rows are independent; tested < 1e-5).
- Optional bearer token: scoring and /v1/model need ``Authorization: Bearer <token>`` (compared
  in constant time); the token is never logged or echoed.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Callable, Iterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from woundscore.cache.schema import LABEL_NAMES
from woundscore.cache.wording import RESEARCH_NOTICE

log = logging.getLogger("woundscore.serve")

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_BATCH = 8
DEFAULT_MAX_WAIT_MS = 10.0
# Decode threads: leave a core to the forward (PIL and torch release the GIL; oversubscribing a
# small CPU slows the forward more than the decodes gain).
DEFAULT_DECODE_THREADS = max(1, min(8, (os.cpu_count() or 2) - 1))
_POLL_S = 0.002  # how often a waiting batch re-checks whether announced requests are still coming
RAW_TYPES = ("application/octet-stream",)
EXAMPLE_IMAGE_RGB = (150, 96, 90)  # the plain image whose real answer is the OpenAPI example


class RequestError(Exception):
    """A request the service refuses: HTTP ``status``, a short ``code`` and a message naming the
    problem (never the body's content)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_body(code: str, message: str) -> dict[str, str]:
    return {"error": code, "detail": message}


class MicroBatcher:
    """Gathers concurrent images into one ``score_fn(list) -> list`` call in a worker thread.

    Rule (module docstring): a batch starts as soon as the forward thread is free with what is
    queued; it waits up to ``max_wait_ms`` only while requests announced with :meth:`expect` are
    still being prepared.
    """

    def __init__(self, score_fn: Callable[[list[Any]], list[dict[str, Any]]], *, max_batch: int,
                 max_wait_ms: float) -> None:
        self.score_fn, self.max_batch, self.max_wait = score_fn, max(1, int(max_batch)), max(0.0, max_wait_ms) / 1000
        self.queue: asyncio.Queue[tuple[Any, asyncio.Future]] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="woundscore-forward")
        self.batches: list[int] = []  # sizes of the batches run (for tests and /v1/model stats)
        self.pending = 0  # requests received and still being decoded (touched on the event loop only)

    @contextmanager
    def expect(self) -> Iterator[None]:
        """Around a request's decoding: a batch being gathered may wait for it (see the rule)."""
        self.pending += 1
        try:
            yield
        finally:
            self.pending -= 1

    async def submit(self, image: Any) -> dict[str, Any]:
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        await self.queue.put((image, fut))
        return await fut

    async def _gather(self) -> list[tuple[Any, asyncio.Future]]:
        loop = asyncio.get_running_loop()
        batch = [await self.queue.get()]
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                batch.append(self.queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            left = deadline - loop.time()
            if left <= 0 or self.pending == 0:  # nothing is on its way: never wait for the unknown
                break
            try:  # short waits: an announced request that fails to decode never arrives
                batch.append(await asyncio.wait_for(self.queue.get(), min(left, _POLL_S)))
            except asyncio.TimeoutError:
                continue
        return batch

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            live = [(x, f) for x, f in batch if not f.done()]  # a client that went away
            if not live:
                continue
            self.batches.append(len(live))
            try:
                results = await loop.run_in_executor(self.executor, self.score_fn, [x for x, _ in live])
            except Exception as exc:  # a bug in scoring: every waiting request gets a 500, the loop goes on
                log.exception("scoring a batch of %d failed", len(live))
                for _, f in live:
                    if not f.done():
                        f.set_exception(exc)
                continue
            for (_, f), r in zip(live, results):
                if not f.done():
                    f.set_result(r)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, read chunk by chunk; 413 as soon as it passes ``max_bytes`` (not after)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise RequestError(413, "too_large", f"body of {int(declared):,} bytes is over the limit of {max_bytes:,} bytes")
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > max_bytes:
            raise RequestError(413, "too_large", f"body is over the limit of {max_bytes:,} bytes")
    return bytes(buf)


def multipart_file(body: bytes, content_type: str) -> bytes:
    """The ``file`` part (or the only part with a filename) of a multipart/form-data body, parsed
    in memory."""
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise RequestError(400, "bad_multipart", "multipart/form-data without a boundary")
    parts: list[dict[str, Any]] = []
    cur: dict[str, Any] = {}
    field: list[bytes] = [b"", b""]

    def begin() -> None:
        cur.clear()
        cur.update(headers={}, data=bytearray())

    def header_end() -> None:
        cur["headers"][field[0].lower()] = field[1]
        field[0] = field[1] = b""

    callbacks = {
        "on_part_begin": begin,
        "on_header_field": lambda d, s, e: field.__setitem__(0, field[0] + d[s:e]),
        "on_header_value": lambda d, s, e: field.__setitem__(1, field[1] + d[s:e]),
        "on_header_end": header_end,
        "on_part_data": lambda d, s, e: cur["data"].__iadd__(d[s:e]),
        "on_part_end": lambda: parts.append(dict(cur)),
    }
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise RequestError(400, "bad_multipart", f"malformed multipart body ({type(exc).__name__})") from None
    named = []
    for p in parts:
        _, disp = parse_options_header(p["headers"].get(b"content-disposition", b""))
        named.append((disp.get(b"name"), disp.get(b"filename"), p))
    chosen = [p for name, _, p in named if name in (b"file", b"image")] or [p for _, fn, p in named if fn is not None]
    if len(chosen) != 1:
        raise RequestError(400, "bad_multipart", "multipart body needs exactly one image part named 'file'")
    return bytes(chosen[0]["data"])


def decode_or_refuse(data: bytes, prepare: Callable[[bytes], Any] | None = None) -> Any:
    """Bytes -> ``prepare(data)`` (default: the RGB PIL image), or a RequestError saying what is
    wrong (no body bytes echoed)."""
    from woundscore.embed.preprocess import ImageDecodeError, decode_image

    if not data:
        raise RequestError(400, "empty_body", "the request has no image (empty body)")
    try:
        return decode_image(data, origin="<bytes>") if prepare is None else prepare(data)
    except ImageDecodeError as exc:
        reason = re.sub(r";? ?first bytes .*\)$", ")", exc.reason)  # keep the body's bytes out of answers
        low = reason.lower()
        code = ("decompression_bomb" if "bomb" in low else "truncated_image" if "truncat" in low or "premature" in low
                else "not_an_image" if low.startswith(("not an image", "heic")) else "undecodable_image")
        raise RequestError(422, code, reason) from None
    except MemoryError:
        raise RequestError(422, "too_large_to_decode", "the image is too large to decode in memory") from None


def _example_from_contract() -> dict[str, Any]:
    """Before the model is loaded: the contract's shape with placeholder numbers."""
    from woundscore.classify.scorer import MODEL_KEYS

    half = {n: 0.5 for n in LABEL_NAMES}
    return {"image": "<bytes>", "scores": half, "raw_scores": half, "flags": {n: True for n in LABEL_NAMES},
            "thresholds": {n: {"value": 0.5, "rule": "0.5"} for n in LABEL_NAMES}, "in_distribution": None,
            "ood": None, "model": {k: None for k in MODEL_KEYS}, "summary": "…"}


class _State:
    """What the app holds: the scorer once loaded, the batcher, the example answer."""

    def __init__(self) -> None:
        self.scorer: Any = None
        self.batcher: MicroBatcher | None = None
        self.decoders: ThreadPoolExecutor | None = None
        self.error: str | None = None
        self.ready = False  # set once loaded AND warmed up (the first forward done)
        self.example: dict[str, Any] = _example_from_contract()
        self.timings: dict[str, float] = {}


def _score_images(state: _State, items: list[Any]) -> list[dict[str, Any]]:
    """In the forward thread: items from ``WoundScorer.prepare`` -> contract + summary each."""
    from woundscore.classify.prompt import render_prompt

    results = state.scorer.score_prepared(items, names=["<bytes>"] * len(items))
    return [{**r, "summary": render_prompt(r)} if "error" not in r else r for r in results]


def _load(state: _State, loader: Callable[[], Any]) -> None:
    """In a worker thread: load the scorer and run one forward (its answer is the API example)."""
    from PIL import Image

    t0 = time.perf_counter()
    scorer = loader()
    t1 = time.perf_counter()
    state.scorer = scorer
    size = getattr(getattr(scorer.encoder, "spec", None), "size", (448, 448))
    example = _score_images(state, [scorer.prepare(Image.new("RGB", (size[1], size[0]), EXAMPLE_IMAGE_RGB))])[0]
    state.timings = {"load_s": t1 - t0, "first_forward_s": time.perf_counter() - t1}
    state.example = example
    state.ready = True


def model_description(state: _State, *, max_bytes: int, max_batch: int, max_wait_ms: float) -> dict[str, Any]:
    """The body of GET /v1/model."""
    from woundscore.classify.scorer import model_info

    m = state.scorer.model
    ood = getattr(m, "ood", None)
    info = model_info(m)
    t = m.thresholds["labels"]
    return {
        "labels": list(LABEL_NAMES),
        "thresholds": {n: {"value": float(t[n]["value"]), "rule": t[n]["applied"]} for n in LABEL_NAMES},
        "calibration": info["calibration"],
        "ood": None if ood is None else {"cutoff": float(ood.cutoff), "method": str(ood.method)},
        "encoder": {"id": info["encoder_id"], "revision": info["encoder_revision"]},
        "model": info,
        "notice": RESEARCH_NOTICE,
        "limits": {"max_bytes": max_bytes, "max_batch": max_batch, "max_wait_ms": max_wait_ms},
    }


def _check_token(request: Request, token: str | None) -> None:
    if token is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    ok = scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())
    if not ok:
        raise RequestError(401, "unauthorized", "a valid 'Authorization: Bearer <token>' header is required")


def _image_from_request(content_type: str, body: bytes) -> bytes:
    ctype = content_type.split(";", 1)[0].strip().lower()
    if ctype == "multipart/form-data":
        return multipart_file(body, content_type)
    if ctype.startswith("image/") or ctype in RAW_TYPES:
        return body
    shown = re.sub(r"[^\w/+.-]", "?", ctype)[:80] or "none"
    raise RequestError(415, "unsupported_media_type",
                       f"Content-Type {shown!r}: send multipart/form-data (field 'file'), image/* or "
                       "application/octet-stream")


_SCORE_DOC = {
    "requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}},
                                           "required": ["file"]}},
        "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        "image/png": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    }},
}
_ERRORS = {s: {"description": d, "content": {"application/json": {"example": error_body(c, d)}}} for s, c, d in (
    (400, "empty_body", "empty body or malformed multipart"), (401, "unauthorized", "token missing or wrong"),
    (413, "too_large", "body over --max-bytes"), (415, "unsupported_media_type", "wrong Content-Type"),
    (422, "not_an_image", "not an image, truncated, or a decompression bomb"), (503, "not_ready", "model not loaded yet"))}


def create_app(model_dir: str | None = None, *, encoder: Any = None, device: str = "auto", dtype: str = "auto",
               max_batch: int = DEFAULT_MAX_BATCH, max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
               max_bytes: int = DEFAULT_MAX_BYTES, token: str | None = None,
               decode_threads: int = DEFAULT_DECODE_THREADS,
               loader: Callable[[], Any] | None = None,
               on_load_error: Callable[[BaseException], None] | None = None) -> FastAPI:
    """The ASGI app scoring with ``model_dir`` (any model folder: MLP, probe, fine-tune).

    ``encoder``/``device``/``dtype``: as WoundScorer.load. ``loader``: a zero-argument callable
    returning a ready WoundScorer (instead of loading ``model_dir``). ``decode_threads``: requests
    decoded and preprocessed at once (beside the one forward thread). ``token``: bearer token
    required by /v1/score and /v1/model (None: open). ``on_load_error``: called if loading fails
    (wound-serve stops the server with exit 1); /readyz then says why.
    """
    from woundscore.classify.scorer import WoundScorer

    if loader is None:
        if model_dir is None:
            raise ValueError("create_app needs model_dir or loader")

        def loader() -> Any:
            s = WoundScorer.load(model_dir, encoder, device=device, dtype=dtype)
            _ = s.encoder  # load and check it now, not on the first request
            return s

    state = _State()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.batcher = MicroBatcher(lambda xs: _score_images(state, xs), max_batch=max_batch, max_wait_ms=max_wait_ms)
        state.decoders = ThreadPoolExecutor(max_workers=max(1, decode_threads), thread_name_prefix="woundscore-decode")
        batch_task = asyncio.create_task(state.batcher.run())
        load_task = asyncio.create_task(_load_async(state, loader, on_load_error))
        try:
            yield
        finally:  # uvicorn has already let in-flight requests finish
            for t in (load_task, batch_task):
                t.cancel()
            state.batcher.executor.shutdown(wait=True)
            state.decoders.shutdown(wait=True)

    app = FastAPI(title="woundscore", version=_version(), lifespan=lifespan,
                  description="Six wound scores from a photo. Research use only: not a diagnosis.")
    app.state.woundscore = state
    _routes(app, state, token=token, max_bytes=max_bytes, limits=dict(max_bytes=max_bytes, max_batch=max_batch,
                                                                       max_wait_ms=max_wait_ms))
    return app


async def _load_async(state: _State, loader: Callable[[], Any],
                      on_load_error: Callable[[BaseException], None] | None) -> None:
    try:
        await asyncio.to_thread(_load, state, loader)
        log.info("model loaded in %.1f s, first forward %.2f s", state.timings["load_s"], state.timings["first_forward_s"])
    except Exception as exc:
        state.error = f"{type(exc).__name__}: {exc}"
        log.error("cannot load the model: %s", state.error)
        if on_load_error is not None:
            on_load_error(exc)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("woundscore")
    except PackageNotFoundError:
        return "0"


def _routes(app: FastAPI, state: _State, *, token: str | None, max_bytes: int, limits: dict[str, Any]) -> None:
    @app.exception_handler(RequestError)
    async def _refuse(request: Request, exc: RequestError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status, headers=headers)

    def not_ready() -> RequestError:
        why = f"model failed to load: {state.error}" if state.error else "model is loading"
        return RequestError(503, "not_ready", why)

    @app.get("/healthz", summary="Alive (the process answers)")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Model loaded and warm (503 before)")
    async def readyz() -> JSONResponse:
        if not state.ready or state.error:
            e = not_ready()
            return JSONResponse(error_body(e.code, e.message), status_code=503)
        return JSONResponse({"status": "ready", **{k: round(v, 3) for k, v in state.timings.items()}})

    @app.get("/v1/model", summary="Labels, thresholds and their rules, calibration, OOD cut-off, encoder, notice")
    async def v1_model(request: Request) -> dict[str, Any]:
        _check_token(request, token)
        if state.scorer is None:
            raise not_ready()
        return model_description(state, **limits)

    @app.post("/v1/score", summary="Score one wound photo", openapi_extra=_SCORE_DOC,
              responses={200: {"description": "the predict contract plus 'summary'",
                               "content": {"application/json": {"example": {}}}}, **_ERRORS})
    async def v1_score(request: Request) -> JSONResponse:
        _check_token(request, token)
        if not state.ready or state.batcher is None or state.decoders is None:
            raise not_ready()
        content_type = request.headers.get("content-type", "")
        if not content_type:
            raise RequestError(415, "unsupported_media_type", "no Content-Type: send multipart/form-data (field "
                               "'file'), image/* or application/octet-stream")
        body = await read_body(request, max_bytes)
        data = _image_from_request(content_type, body)
        with state.batcher.expect():  # a batch being gathered may wait for this one
            item = await asyncio.get_running_loop().run_in_executor(state.decoders, decode_or_refuse, data,
                                                                    state.scorer.prepare)
        result = await state.batcher.submit(item)
        if "error" in result:
            raise RequestError(422, "undecodable_image", result["error"])
        return JSONResponse(result)

    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        app.openapi_schema = None  # rebuilt each time: the example becomes the model's real answer once loaded
        schema = base_openapi()
        resp = schema["paths"]["/v1/score"]["post"]["responses"]["200"]["content"]["application/json"]
        resp["example"] = state.example
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
