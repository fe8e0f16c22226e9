"""`wound-serve` for real: a subprocess on a random 127.0.0.1 port with the tiny random SigLIP and
an MLP trained on it, spoken to over HTTP by httpx. The contract, every bad request, auth on and
off, 8 clients x 4 concurrent requests equal to offline scoring, readiness before load, and a
graceful SIGTERM with a request in flight. One server per purpose, shared by the module."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from woundscore.cache.schema import LABEL_NAMES
from tests.serve_helpers import Server, noise_png, png_bomb, ready_client, trained  # noqa: F401 (fixture)

MAX_BYTES = 3_000_000
TOKEN = "s3cret-token-value-1234"
SECRET_BODY = b"<html>BODY-MARKER-that-must-not-be-logged</html>"


@pytest.fixture(scope="module")
def server(trained, tiny_siglip_dir: Path):
    work, model_dir, _ = trained
    srv = Server(work, model_dir, tiny_siglip_dir, "--max-bytes", str(MAX_BYTES), "--max-batch", "8",
                 "--max-wait-ms", "20", name="open")
    try:
        srv.wait()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def offline(trained, tiny_siglip_dir: Path):
    from woundscore.classify.scorer import WoundScorer

    _, model_dir, images = trained
    scorer = WoundScorer.load(model_dir, encoder=str(tiny_siglip_dir), device="cpu")
    return scorer, {f.name: scorer.score(f) for f in images}


def post_image(url: str, data: bytes, ctype: str = "image/jpeg", **kw) -> httpx.Response:
    return httpx.post(url + "/v1/score", content=data, headers={"content-type": ctype, **kw.pop("headers", {})},
                      timeout=60, **kw)


def assert_same_scores(a: dict, b: dict) -> None:
    for key in ("scores", "raw_scores"):
        np.testing.assert_allclose([a[key][n] for n in LABEL_NAMES], [b[key][n] for n in LABEL_NAMES], rtol=0, atol=1e-5)
    assert a["flags"] == b["flags"] and a["thresholds"] == b["thresholds"] and a["model"] == b["model"]


def test_contract_raw_and_multipart(server, trained, offline) -> None:
    from woundscore.classify.prompt import render_prompt
    from woundscore.classify.scorer import CONTRACT_KEYS

    _, model_dir, images = trained
    f = images[0]
    raw = post_image(server.url, f.read_bytes())
    assert raw.status_code == 200, raw.text
    obj = raw.json()
    assert list(obj) == [*CONTRACT_KEYS, "summary"]
    assert obj["image"] == "<bytes>" and obj["model"]["path"] == str(model_dir)
    assert obj["summary"] == render_prompt({k: v for k, v in obj.items() if k != "summary"})
    assert_same_scores(obj, offline[1][f.name])
    multi = httpx.post(server.url + "/v1/score", files={"file": (f.name, f.read_bytes(), "image/jpeg")}, timeout=60)
    assert multi.status_code == 200, multi.text
    assert_same_scores(multi.json(), obj)
    octet = post_image(server.url, f.read_bytes(), "application/octet-stream")
    assert octet.status_code == 200 and octet.json()["scores"] == obj["scores"]


def test_model_health_and_openapi_example_is_a_real_answer(server, trained) -> None:
    _, model_dir, images = trained
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(server.url + "/readyz").status_code == 200
    m = httpx.get(server.url + "/v1/model").json()
    thresholds = json.loads((model_dir / "thresholds.json").read_text())["labels"]
    assert m["labels"] == list(LABEL_NAMES)
    assert m["thresholds"] == {n: {"value": thresholds[n]["value"], "rule": thresholds[n]["applied"]} for n in LABEL_NAMES}
    prov = json.loads((model_dir / "provenance.json").read_text())
    assert m["encoder"] == {"id": prov["encoder"]["encoder_id"], "revision": prov["encoder"]["encoder_revision"]}
    assert m["limits"]["max_bytes"] == MAX_BYTES and "not a diagnosis" in m["notice"]
    schema = httpx.get(server.url + "/openapi.json").json()
    example = schema["paths"]["/v1/score"]["post"]["responses"]["200"]["content"]["application/json"]["example"]
    real = post_image(server.url, images[1].read_bytes()).json()
    assert list(example) == list(real)
    for k in ("scores", "raw_scores", "flags", "thresholds", "model"):
        assert list(example[k]) == list(real[k]), k
    assert example["model"] == real["model"]  # the example comes from this very model
    assert "multipart/form-data" in schema["paths"]["/v1/score"]["post"]["requestBody"]["content"]


@pytest.mark.parametrize("body, ctype, status, code", [
    (SECRET_BODY, "image/jpeg", 422, "not_an_image"),
    (b"", "image/jpeg", 400, "empty_body"),
    (png_bomb(), "image/png", 422, "decompression_bomb"),
    (b"hello", "text/plain", 415, "unsupported_media_type"),
    (b'{"image": 1}', "application/json", 415, "unsupported_media_type"),
    (b"--xx\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nabc\r\n--xx--\r\n",
     "multipart/form-data; boundary=xx", 400, "bad_multipart"),
])
def test_bad_requests_are_4xx_and_the_server_keeps_serving(server, trained, body, ctype, status, code) -> None:
    _, _, images = trained
    r = post_image(server.url, body, ctype)
    assert r.status_code == status, r.text
    assert r.json()["error"] == code and r.json()["detail"]
    assert "BODY-MARKER" not in r.text
    assert post_image(server.url, images[0].read_bytes()).status_code == 200


def test_truncated_image(server, trained) -> None:
    data = trained[2][0].read_bytes()
    r = post_image(server.url, data[: len(data) // 2])
    assert r.status_code == 422 and r.json()["error"] == "truncated_image", r.text


def test_body_over_the_limit_is_refused_while_reading(server, trained) -> None:
    big = noise_png(1100)  # ~3.6 MB > MAX_BYTES
    assert len(big) > MAX_BYTES
    r = post_image(server.url, big, "image/png")
    assert r.status_code == 413 and r.json()["error"] == "too_large"

    def chunks():  # no Content-Length: the limit must trip while the body streams in
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]

    r = httpx.post(server.url + "/v1/score", content=chunks(), headers={"content-type": "image/png"}, timeout=60)
    assert r.status_code == 413 and r.json()["error"] == "too_large"
    assert post_image(server.url, trained[2][0].read_bytes()).status_code == 200


def test_large_multipart_upload_leaves_no_temp_file(server) -> None:
    """Starlette's form() spools parts over 1 MB to a temporary file; the service must not."""
    png = noise_png(900)  # ~2.4 MB: over the 1 MB spool threshold, under MAX_BYTES
    before = sorted(p.name for p in server.tmpdir.rglob("*"))
    r = httpx.post(server.url + "/v1/score", files={"file": ("big.png", png, "image/png")}, timeout=120)
    assert r.status_code == 200, r.text
    assert sorted(p.name for p in server.tmpdir.rglob("*")) == before


def test_concurrent_clients_equal_offline_scores(server, trained, offline) -> None:
    """8 clients x 4 concurrent requests: every answer equals offline scoring of the same image."""
    _, _, images = trained

    async def client(k: int) -> list[tuple[str, dict]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as c:
            picks = [images[(k + j) % len(images)] for j in range(4)]
            rs = await asyncio.gather(*[c.post("/v1/score", content=f.read_bytes(),
                                                headers={"content-type": "image/jpeg"}) for f in picks])
            return [(f.name, r.json()) for f, r in zip(picks, rs) if r.status_code == 200]

    async def main():
        return await asyncio.gather(*[client(k) for k in range(8)])

    answers = [a for per in asyncio.run(main()) for a in per]
    assert len(answers) == 32
    for name, obj in answers:
        assert_same_scores(obj, offline[1][name])


def test_batch_does_not_change_an_answer(trained, offline) -> None:
    scorer, single = offline
    _, _, images = trained
    together = scorer.score_batch(images)
    prepared = scorer.score_prepared([scorer.prepare(f.read_bytes()) for f in images], [f.name for f in images])
    for f, r, p in zip(images, together, prepared):
        assert_same_scores(r, single[f.name])
        assert_same_scores(p, single[f.name])  # the service's path: pixels prepared apart, one stacked forward


def test_logs_hold_no_body(server) -> None:
    post_image(server.url, SECRET_BODY)
    time.sleep(0.2)
    assert "BODY-MARKER" not in server.log.read_text(errors="replace")


def test_auth_readiness_and_graceful_sigterm(trained, tiny_siglip_dir: Path) -> None:
    """Token on (file): 401 without it, 200 with it, never logged. Before the model loads /healthz
    is 200 and /readyz 503. SIGTERM while a request is in flight: it is answered, exit 0."""
    work, model_dir, images = trained
    gate = work / "gate"
    (work / "token").write_text(TOKEN + "\n")
    srv = Server(work, model_dir, tiny_siglip_dir, "--token-file", str(work / "token"), name="auth",
                 env={"WS_TEST_LOAD_GATE": str(gate), "WS_TEST_FORWARD_DELAY": "1.5"})
    try:
        srv.wait("/healthz")
        assert httpx.get(srv.url + "/readyz").status_code == 503
        auth = {"authorization": f"Bearer {TOKEN}"}
        r = post_image(srv.url, images[0].read_bytes(), headers=auth)
        assert r.status_code == 503 and r.json()["error"] == "not_ready"
        gate.write_text("go")
        srv.wait("/readyz")
        data = images[0].read_bytes()
        assert post_image(srv.url, data).status_code == 401
        wrong = post_image(srv.url, data, headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401 and TOKEN not in wrong.text
        assert httpx.get(srv.url + "/v1/model").status_code == 401
        ok = post_image(srv.url, data, headers=auth)
        assert ok.status_code == 200 and TOKEN not in ok.text
        box: dict = {}
        t = threading.Thread(target=lambda: box.update(r=post_image(srv.url, data, headers=auth)))
        t.start()
        time.sleep(0.5)  # the request is now inside its 1.5 s forward
        srv.proc.send_signal(signal.SIGTERM)
        t.join(60)
        assert box["r"].status_code == 200 and box["r"].json()["scores"] == ok.json()["scores"]
        assert srv.proc.wait(30) == 0
        with pytest.raises(httpx.TransportError):
            httpx.get(srv.url + "/healthz", timeout=2)
    finally:
        srv.stop()
    assert TOKEN not in srv.log.read_text(errors="replace")


def test_an_idle_batcher_runs_a_lone_request_at_once_and_waits_only_for_announced_ones() -> None:
    """Micro-batching adds no latency when idle: --max-wait-ms is spent only on requests already
    received and still being decoded (``expect()``), never on requests that may come."""
    from woundscore.classify.serve import MicroBatcher

    async def main() -> tuple[float, float, list[int]]:
        b = MicroBatcher(lambda xs: [{"x": x} for x in xs], max_batch=8, max_wait_ms=3000)
        task = asyncio.create_task(b.run())
        t = time.perf_counter()
        assert await b.submit(1) == {"x": 1}
        idle = time.perf_counter() - t

        async def announced() -> dict:
            with b.expect():  # received, still being decoded for 0.2 s
                await asyncio.sleep(0.2)
            return await b.submit(3)

        t = time.perf_counter()
        late = asyncio.create_task(announced())
        await asyncio.sleep(0.01)
        assert await b.submit(2) == {"x": 2} and await late == {"x": 3}
        paired = time.perf_counter() - t

        async def refused() -> None:  # announced, then refused (not an image): never submitted
            with b.expect():
                await asyncio.sleep(0.2)

        t = time.perf_counter()
        gone = asyncio.create_task(refused())
        await asyncio.sleep(0.01)
        assert await b.submit(4) == {"x": 4}
        await gone
        abandoned = time.perf_counter() - t
        task.cancel()
        b.executor.shutdown()
        return idle, paired, abandoned, b.batches

    idle, paired, abandoned, batches = asyncio.run(main())
    assert idle < 1.0, f"a lone request on an idle server waited {idle:.2f} s"
    assert batches == [1, 2, 1] and paired < 2.0 and abandoned < 2.0


def test_a_non_finite_row_is_an_error_and_the_others_are_scored(trained, offline, monkeypatch) -> None:
    scorer, single = offline
    _, _, images = trained
    enc = scorer.encoder
    real = enc.embed_pixels_checked

    def one_bad(pixels):
        X, finite = real(pixels)
        X[1], finite[1] = np.nan, False
        return X, finite

    monkeypatch.setattr(enc, "embed_pixels_checked", one_bad)
    out = scorer.score_prepared([scorer.prepare(f) for f in images[:3]], ["a", "b", "c"])
    assert list(out[1]) == ["image", "error"] and out[1]["image"] == "b" and "non-finite" in out[1]["error"]
    assert_same_scores(out[0], single[images[0].name])
    assert_same_scores(out[2], single[images[2].name])


def test_preprocessing_runs_outside_the_forward_thread(trained, tiny_siglip_dir: Path, offline, monkeypatch) -> None:
    """Decode AND resize/normalise run in the request's decode thread; the forward thread only
    gets stacked pixels (the offline path overlaps them the same way). Answers stay offline's."""
    import threading as th

    import woundscore.embed.encoder as E
    import woundscore.embed.preprocess as P
    from woundscore.classify.serve import create_app

    _, model_dir, images = trained
    seen: list[str] = []
    real = P.preprocess

    def spy(image, spec):
        seen.append(th.current_thread().name)
        return real(image, spec)

    monkeypatch.setattr(P, "preprocess", spy)
    monkeypatch.setattr(E, "preprocess", spy)
    with ready_client(create_app(str(model_dir), encoder=str(tiny_siglip_dir), device="cpu")) as c:
        seen.clear()  # the warm-up forward is not a request
        rs = [c.post("/v1/score", content=f.read_bytes(), headers={"content-type": "image/jpeg"}) for f in images[:3]]
    assert [r.status_code for r in rs] == [200] * 3
    assert len(seen) == 3 and not [n for n in seen if n.startswith("woundscore-forward")], seen
    for f, r in zip(images, rs):
        assert_same_scores(r.json(), offline[1][f.name])


def test_probe_folder_in_process(trained, mini_mlp, tiny_siglip_dir: Path, tmp_path: Path) -> None:
    """create_app is a plain ASGI app: a probe folder served in-process answers the same contract."""
    from fastapi.testclient import TestClient

    from woundscore.cache import read_cache
    from woundscore.classify.scorer import CONTRACT_KEYS
    from woundscore.classify.serve import create_app
    from woundscore.classify.train import train_on_set

    images = trained[2]
    probe = tmp_path / "probe"
    train_on_set(read_cache(mini_mlp[0]), probe, model="logreg", source="emb.h5")
    with TestClient(create_app(str(probe), encoder=str(tiny_siglip_dir), device="cpu")) as c:
        t_end = time.monotonic() + 60
        while c.get("/readyz").status_code != 200 and time.monotonic() < t_end:
            time.sleep(0.05)
        r = c.post("/v1/score", content=images[0].read_bytes(), headers={"content-type": "image/jpeg"})
    assert r.status_code == 200, r.text
    assert list(r.json()) == [*CONTRACT_KEYS, "summary"] and r.json()["model"]["type"] == "logreg"


def test_modal_app_imports() -> None:
    """deploy/modal_app.py wraps the same create_app; it cannot be deployed from here, only imported."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "deploy" / "modal_app.py"
    spec = importlib.util.spec_from_file_location("modal_app", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.app.name == "woundscore" and type(mod.web).__name__ == "Function"
    assert "create_app" in path.read_text() and "gpu=\"T4\"" in path.read_text()
