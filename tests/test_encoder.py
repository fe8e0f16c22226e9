"""The encoder: vision tower only, equal to SiglipModel.get_image_features, provenance, actionable
load errors (missing folder, offline without cache, gated / no token), dtype choice, NaN fallback."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from woundscore.embed.encoder import NonFiniteEmbeddingError, load_encoder, local_revision
from woundscore.embed.runtime import EncoderLoadError, cpu_has_native_bf16, resolve_dtype
from woundscore.embed.preprocess import preprocess
from tests.test_hostile_images import encode, jpeg, photo


@pytest.fixture(scope="module")
def enc(tiny_siglip_dir):
    return load_encoder(tiny_siglip_dir, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def full_model(tiny_siglip_dir):
    from transformers import SiglipModel

    return SiglipModel.from_pretrained(tiny_siglip_dir).eval()


def test_vector_equals_get_image_features_pooler_output(enc, full_model):
    torch.manual_seed(1)
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        out = full_model.get_image_features(pixel_values=x)
    ref = out.pooler_output.numpy()  # transformers 5: an output object, pooled feature in .pooler_output
    got = enc.embed_pixels(x)
    assert got.shape == (3, 32) and got.dtype == np.float32
    assert np.abs(got - ref).max() < 1e-5
    # unnormalised (the pooled output, not an L2-normalised one): fails if the encoder normalises
    assert not np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-2)


def test_embed_images_takes_bytes_paths_and_pil_through_the_one_preprocessing(enc, full_model, tmp_path):
    data = [jpeg(90, 60, seed=1), encode(Image.fromarray(photo(30, 70, 2)), "PNG")]
    p = tmp_path / "b.png"
    p.write_bytes(data[1])
    got = enc.embed_images([data[0], p, Image.open(tmp_path / "b.png")], batch_size=2)
    from woundscore.embed.preprocess import decode_image

    pixels = torch.stack([preprocess(decode_image(d), enc.spec) for d in (data[0], data[1], data[1])])
    with torch.no_grad():
        ref = full_model.get_image_features(pixel_values=pixels).pooler_output.numpy()
    assert np.abs(got - ref).max() < 1e-5
    # Same image in another batch (size 2 vs 1): equal up to the last bits only; this is why
    # `wound-embed run` uses fixed chunks of the source so that reruns are bit-identical.
    np.testing.assert_allclose(got[1], got[2], atol=1e-5, rtol=0)


def test_only_the_vision_tower_is_loaded_with_sdpa(enc, full_model):
    names = [n for n, _ in enc._model.named_parameters()]
    assert not any("text" in n for n in names)
    assert any(n.startswith("head.") for n in names)  # the attention-pooling head is there
    vision_params = sum(p.numel() for p in full_model.vision_model.parameters())
    assert sum(p.numel() for p in enc._model.parameters()) == vision_params
    assert enc._model.config._attn_implementation == "sdpa"
    assert enc.dim == 32 and enc.spec.size == (64, 64)


def test_provenance_records_revision_and_notice(enc, tiny_siglip_dir):
    p = enc.provenance()
    assert p["encoder_id"] == "local/" + tiny_siglip_dir.name
    assert p["encoder_revision"] == local_revision(tiny_siglip_dir) and p["encoder_revision"].startswith("local:")
    assert p["embedding_dim"] == 32 and p["preprocessing"]["size"] == [64, 64]
    assert p["compute_dtype"] == "float32" and p["device"] == "cpu"
    assert p["notice"] == "random weights - not MedSigLIP"
    assert {"torch", "transformers", "pillow"} <= set(p["versions"])


def test_local_revision_follows_the_weights(tiny_siglip_dir, tmp_path):
    from woundscore.embed.tiny import build_tiny_siglip

    same = build_tiny_siglip(tmp_path / "same", seed=0)
    other = build_tiny_siglip(tmp_path / "other", seed=1)
    assert local_revision(same) == local_revision(tiny_siglip_dir)  # deterministic by seed
    assert local_revision(other) != local_revision(tiny_siglip_dir)
    assert "random weights - not MedSigLIP" in (same / "README.md").read_text()


def test_missing_folder_error_text(tmp_path):
    missing = tmp_path / "nowhere" / "medsiglip"
    with pytest.raises(EncoderLoadError) as e:
        load_encoder(str(missing))
    assert str(e.value) == (
        f"model folder not found: {missing}. Pass --model with an existing folder (config.json, "
        "preprocessor_config.json, model.safetensors) or a hub id such as google/medsiglip-448."
    )


def test_missing_folder_through_the_cli(tmp_path, labels_csv_dir):
    from woundscore.embed.cli import cli

    r = CliRunner().invoke(cli, ["run", str(labels_csv_dir), "--out", str(tmp_path / "e.h5"),
                                 "--model", "./no/such/folder", "--quiet"])
    assert r.exit_code == 1
    assert r.output.startswith("Error: model folder not found: ./no/such/folder. Pass --model")
    assert not (tmp_path / "e.h5").exists()  # nothing written


def test_offline_without_cache_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderLoadError) as e:
        load_encoder("google/medsiglip-448", cache_dir=tmp_path / "hf")
    assert str(e.value) == (
        "cannot load google/medsiglip-448: HF_HUB_OFFLINE is set and it is not in the local cache "
        f"({tmp_path / 'hf'}). Download it once with network access (accept the terms at "
        "https://huggingface.co/google/medsiglip-448, run `hf auth login` or set HF_TOKEN, then "
        "`hf download google/medsiglip-448`). Offline alternative: pass --model /path/to/folder, a folder "
        "holding config.json, preprocessor_config.json and model.safetensors (e.g. made once online with "
        "`hf download google/medsiglip-448 --local-dir FOLDER`)."
    )


def _gated(status: int):
    import httpx2
    from huggingface_hub.errors import GatedRepoError

    req = httpx2.Request("GET", "https://huggingface.co/api/models/google/medsiglip-448/revision/main")
    return GatedRepoError(f"{status} Client Error", response=httpx2.Response(status, request=req))


@pytest.mark.parametrize("token, status, words", [
    (None, 401, "no Hugging Face token found, and the model is gated (HTTP 401). Accept the terms at "
                "https://huggingface.co/google/medsiglip-448, then run `hf auth login` (or set HF_TOKEN)"),
    ("hf_SECRETtoken123", 403, "access denied (HTTP 403): the account of your Hugging Face token has not "
                               "been granted access. Accept the terms at https://huggingface.co/google/medsiglip-448"),
])
def test_gated_model_errors_explain_the_fix(monkeypatch, tmp_path, token, status, words):
    import huggingface_hub

    def refuse(*a, **k):
        raise _gated(status)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: token)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    with pytest.raises(EncoderLoadError) as e:
        load_encoder("google/medsiglip-448", cache_dir=tmp_path)
    msg = str(e.value)
    assert msg.startswith("cannot load google/medsiglip-448: ") and words in msg
    assert "--model /path/to/folder" in msg
    assert "SECRET" not in msg  # a token is never printed


def test_dtype_auto_choice():
    assert resolve_dtype("auto", "cuda:0", cuda_capability=(8, 0)) == torch.bfloat16
    assert resolve_dtype("auto", "cuda:0", cuda_capability=(9, 0)) == torch.bfloat16
    assert resolve_dtype("auto", "cuda:0", cuda_capability=(7, 5)) == torch.float16  # T4
    assert resolve_dtype("auto", "cpu", cpu_bf16=True) == torch.bfloat16
    assert resolve_dtype("auto", "cpu", cpu_bf16=False) == torch.float32
    assert resolve_dtype("float16", "cpu") == torch.float16
    assert cpu_has_native_bf16("processor: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n")
    assert cpu_has_native_bf16("flags : fpu avx2 amx_bf16\n")
    assert not cpu_has_native_bf16("flags : fpu sse avx2 avx512f avx512bw\n")  # emulated bf16 only
    assert cpu_has_native_bf16("Features\t: fp asimd bf16 i8mm\n")  # ARM
    with pytest.raises(EncoderLoadError) as e:  # a library caller's typo, not a KeyError
        resolve_dtype("fp16", "cpu")
    assert str(e.value) == "unknown dtype 'fp16': choose auto, float32, bfloat16 or float16"


def test_forced_half_precision_on_a_cpu_without_it_warns(caplog):
    """Emulated bf16 is 100-700x slower than float32 (bench/RESULTS.md): say so, but obey."""
    with caplog.at_level("WARNING", logger="embed"):
        assert resolve_dtype("bfloat16", "cpu", cpu_bf16=False) == torch.bfloat16
    assert "--dtype bfloat16 on a CPU without native bf16/fp16 matmul is emulated" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="embed"):
        resolve_dtype("bfloat16", "cpu", cpu_bf16=True)
        resolve_dtype("float32", "cpu", cpu_bf16=False)
        resolve_dtype("bfloat16", "cuda:0")
    assert caplog.text == ""


def _poison(model, rows=None):
    """A forward hook making the pooled output NaN (all rows, or the given ones)."""

    def hook(module, args, out):
        pooled = out.pooler_output.clone()
        pooled[rows if rows is not None else slice(None)] = float("nan")
        out.pooler_output = pooled
        return out

    return model.register_forward_hook(hook)


def test_non_finite_output_is_redone_in_float32_and_logged(tiny_siglip_dir, enc, caplog):
    low = load_encoder(tiny_siglip_dir, device="cpu", dtype="bfloat16")
    assert low.dtype == torch.bfloat16
    _poison(low._model)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with caplog.at_level(logging.WARNING, logger="embed"):
        got = low.embed_pixels(x)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, enc.embed_pixels(x), atol=1e-5, rtol=0)  # the fp32 weights, reloaded
    assert low.fp32_redone == 1
    assert "non-finite embedding in bfloat16 for 2 of 2 images: batch redone in float32" in caplog.text


def test_non_finite_even_in_float32_is_never_returned(tiny_siglip_dir):
    e32 = load_encoder(tiny_siglip_dir, device="cpu", dtype="float32")
    _poison(e32._model, rows=[1])
    feats, finite = e32.embed_pixels_checked(torch.zeros(3, 3, 64, 64))
    assert finite.tolist() == [True, False, True]
    with pytest.raises(NonFiniteEmbeddingError, match=r"rows \[1\] even in float32"):
        e32.embed_pixels(torch.zeros(3, 3, 64, 64))


def test_run_never_writes_non_finite_rows(tiny_siglip_dir, labels_csv_dir, tmp_path):
    from woundscore.cache import read_cache, read_failures, verify_cache
    from woundscore.embed.run import run_embedding

    e32 = load_encoder(tiny_siglip_dir, device="cpu", dtype="float32")
    _poison(e32._model, rows=[0])  # the first image of every batch
    s = run_embedding(labels_csv_dir, tmp_path / "e.h5", encoder=e32, batch_size=8, workers=0, quiet=True)
    es = read_cache(tmp_path / "e.h5")
    assert verify_cache(tmp_path / "e.h5") == []
    assert np.isfinite(es.X).all() and len(es) == 16 - 2 and s.exit_code == 3
    reasons = [f["reason"] for f in read_failures(tmp_path / "e.h5")]
    assert len(reasons) == 2 and all(r.endswith("non-finite embedding even in float32") for r in reasons)


def test_hub_id_records_the_commit_actually_loaded(tiny_siglip_dir, tmp_path, monkeypatch):
    """A hub id served from the local HF cache (offline): the snapshot's commit hash is the
    revision recorded, and the encoder id is the hub id."""
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "models--google--medsiglip-448"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        shutil.copyfile(tiny_siglip_dir / name, snap / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = load_encoder("google/medsiglip-448", device="cpu", dtype="float32", cache_dir=tmp_path / "hf")
    p = enc.provenance()
    assert (p["encoder_id"], p["encoder_revision"]) == ("google/medsiglip-448", commit)
    assert enc.spec.size == (64, 64)
