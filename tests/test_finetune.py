"""Selective-unfreeze fine-tune: frozen-prefix equality, the shared loss, the Trainer run, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from woundscore.cache.schema import LABEL_NAMES
from woundscore.compare.cli import cli
from woundscore.compare.prefix import SelectiveUnfreezeClassifier, UnfreezeError, compute_prefix


@pytest.fixture(scope="module")
def tiny_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared tiny random SigLIP (vision + text, 2 blocks), or one built here if absent."""
    try:
        return request.getfixturevalue("tiny_siglip_dir")
    except pytest.FixtureLookupError:
        from woundscore.embed.tiny import build_tiny_siglip

        return build_tiny_siglip(tmp_path_factory.mktemp("tiny_ft"))


@pytest.fixture(scope="module")
def base_model(tiny_dir: Path):
    from woundscore.compare.finetune import load_classifier

    model, _ = load_classifier(tiny_dir)
    return model


def _fresh(base_model, **kw) -> SelectiveUnfreezeClassifier:
    import copy

    return SelectiveUnfreezeClassifier(copy.deepcopy(base_model), **kw).train()


def _labels(n: int, seed: int = 0) -> torch.Tensor:
    g = np.random.default_rng(seed)
    y = g.integers(0, 2, size=(n, len(LABEL_NAMES))).astype(np.float32)
    y[g.random(y.shape) < 0.25] = -100.0  # missing entries, as the Trainer's batches carry them
    return torch.as_tensor(y)


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_prefix_path_equals_plain_path_logits_loss_and_gradients(base_model, pooling: str) -> None:
    from woundscore.compare.finetune import MaskedBCELossFunc

    torch.manual_seed(1)
    net = _fresh(base_model, unfreeze_last=1, pooling=pooling)
    size = net.vision.config.image_size
    pixels = torch.randn(3, 3, size, size)
    y = _labels(3)
    loss_fn = MaskedBCELossFunc(np.array([1.0, 2.0, 0.5, 3.0, 1.5, 1.0]))

    plain = net(pixel_values=pixels)
    loss_plain = loss_fn(plain, y)
    loss_plain.backward()
    grads_plain = {n: p.grad.clone() for n, p in net.named_parameters() if p.requires_grad}
    net.zero_grad(set_to_none=True)

    states = compute_prefix(net, [pixels[:2], pixels[2:]], n=3)
    assert states.shape == (3, (size // net.vision.config.patch_size) ** 2, net.vision.config.hidden_size)
    cached = net(prefix_states=states)
    loss_cached = loss_fn(cached, y)
    loss_cached.backward()

    torch.testing.assert_close(cached.logits, plain.logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(loss_cached, loss_plain, rtol=0, atol=1e-6)
    assert grads_plain and all(g.abs().sum() > 0 for g in grads_plain.values())
    for name, p in net.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, grads_plain[name], rtol=1e-5, atol=1e-7, msg=name)
        else:
            assert p.grad is None, f"frozen parameter {name} got a gradient"


def test_mean_pooling_plain_path_is_the_hf_model_itself(base_model) -> None:
    net = _fresh(base_model, unfreeze_last=1, pooling="mean")
    size = net.vision.config.image_size
    pixels = torch.randn(2, 3, size, size)
    expected = net.base(pixel_values=pixels).logits
    torch.testing.assert_close(net(pixel_values=pixels).logits, expected, rtol=0, atol=0)


def test_unfreeze_selects_last_blocks_norm_head_and_classifier(base_model) -> None:
    n_layers = len(base_model.vision_model.encoder.layers)
    for pooling in ("mean", "attention"):
        net = _fresh(base_model, unfreeze_last=1, pooling=pooling)
        trainable = {n for n, p in net.named_parameters() if p.requires_grad}
        last = f"base.vision_model.encoder.layers.{n_layers - 1}."
        assert all(
            n.startswith((last, "base.vision_model.post_layernorm.", "base.classifier."))
            or (pooling == "attention" and n.startswith("base.vision_model.head."))
            for n in trainable
        )
        assert any(n.startswith("base.vision_model.head.") for n in trainable) == (pooling == "attention")
        assert not any(n.startswith("base.vision_model.embeddings.") for n in trainable)
        counted, total = net.parameter_counts()
        assert counted == sum(p.numel() for n, p in net.named_parameters() if n in trainable)
        assert total == sum(p.numel() for p in net.parameters())
    assert _fresh(base_model, unfreeze_last=0).parameter_counts()[0] < counted
    with pytest.raises(UnfreezeError) as e:
        _fresh(base_model, unfreeze_last=n_layers + 1)
    assert str(e.value) == (
        f"unfreeze_last={n_layers + 1} is outside 0..{n_layers} (the model has {n_layers} encoder blocks)"
    )


def test_scan_skips_unreadable_images_with_the_prefix_cache(base_model, tiny_dir: Path) -> None:
    """An unreadable image is recorded and left out of the prefix cache (the run goes on); a split
    with no readable image gives no states (the fine-tune then says so)."""
    import io
    from types import SimpleNamespace

    from PIL import Image

    from woundscore.compare.finetune_trainer import PixelDataset, scan
    from woundscore.embed.preprocess import resolve_spec

    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(buf, "JPEG")

    def sample(i: int, data: bytes) -> SimpleNamespace:
        return SimpleNamespace(image_id=f"i{i}", origin=f"i{i}", labels=[1, 0, -1, 0, 1, 0], read_bytes=lambda: data)

    net, spec = _fresh(base_model, unfreeze_last=1), resolve_spec(tiny_dir)
    kw = {"batch_size": 2, "workers": 0, "device": "cpu", "autocast_dtype": None, "with_prefix": True, "desc": "t",
          "quiet": True}
    good = [sample(0, buf.getvalue()), sample(1, b"junk"), sample(2, buf.getvalue())]
    kept, errors, states = scan(net, PixelDataset(good, spec, safe=True), **kw)
    assert kept == [0, 2] and [i for i, _ in errors] == [1] and states.shape[0] == 2
    torch.testing.assert_close(states[1], states[0])  # same image, same prefix
    kept, errors, states = scan(net, PixelDataset([sample(1, b"junk")], spec, safe=True), **kw)
    assert kept == [] and len(errors) == 1 and states is None


def test_a_vision_only_checkpoint_loads_as_the_same_classifier(tmp_path: Path) -> None:
    from transformers import SiglipVisionModel

    from woundscore.compare.finetune import load_classifier
    from woundscore.embed.tiny import build_tiny_siglip

    folder = build_tiny_siglip(tmp_path / "vision-only", with_text=False)
    net, ckpt = load_classifier(folder)
    assert type(net).__name__ == "SiglipForImageClassification" and ckpt.path == folder.resolve()
    assert net.config.id2label == dict(enumerate(LABEL_NAMES))
    assert not any(p.is_meta for p in net.parameters())
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = SiglipVisionModel.from_pretrained(folder).eval()(pixels).last_hidden_state
        torch.testing.assert_close(net.eval().vision_model(pixels).last_hidden_state, expected, rtol=0, atol=0)
        assert net(pixel_values=pixels).logits.shape == (2, 6)


def test_loss_is_the_classify_loss_and_accumulation_gives_the_full_batch_loss() -> None:
    from woundscore.classify.loss import masked_bce
    from woundscore.compare.finetune import MaskedBCELossFunc

    pw = np.array([2.0, 1.0, 0.5, 4.0, 1.0, 3.0])
    fn = MaskedBCELossFunc(pw)
    logits = torch.randn(6, 6, requires_grad=True)
    y = _labels(6, seed=3)
    y_schema = torch.where(y == -100, torch.full_like(y, -1.0), y)
    full = masked_bce(y_schema, logits, torch.as_tensor(pw, dtype=torch.float32))
    # Eval (no num_items_in_batch): the classify loss itself.
    torch.testing.assert_close(fn({"logits": logits}, y), full)
    # Two micro-batches of an accumulated batch, as the Trainer calls it: sums to the full loss.
    n_obs = (y != -100).sum()
    parts = [fn({"logits": logits[s]}, y[s], num_items_in_batch=n_obs) for s in (slice(0, 2), slice(2, 6))]
    torch.testing.assert_close(parts[0] + parts[1], full, rtol=1e-6, atol=1e-7)
    (g_full,) = torch.autograd.grad(full, logits)
    (g_acc,) = torch.autograd.grad(parts[0] + parts[1], logits)
    torch.testing.assert_close(g_acc, g_full)
    assert torch.all(g_full[y == -100] == 0)  # missing entries add no gradient


def test_nan_guard_skips_then_stops_with_a_clear_message() -> None:
    from woundscore.compare.finetune import MaskedBCELossFunc, NonFiniteLossError

    fn = MaskedBCELossFunc(np.ones(6), max_nonfinite=2)
    y = torch.ones(2, 6)
    bad = {"logits": torch.full((2, 6), float("nan"), requires_grad=True)}
    with pytest.warns(RuntimeWarning, match="non-finite loss in a training batch"):
        skipped = fn(bad, y)
    assert skipped.item() == 0.0 and skipped.requires_grad
    good = fn({"logits": torch.zeros(2, 6, requires_grad=True)}, y)  # a finite batch resets the run
    assert torch.isfinite(good)
    with pytest.warns(RuntimeWarning):
        fn(bad, y)
    with pytest.raises(NonFiniteLossError) as e:
        fn(bad, y)
    assert str(e.value) == (
        "the loss was NaN/inf in 2 batches in a row (3 in all); stopped. "
        "Try --dtype float32 (float16 overflows most often) or a lower --lr"
    )
    # Under float16 the loss goes on to the GradScaler, which skips the step itself.
    fp16 = MaskedBCELossFunc(np.ones(6), scaler_skips=True)
    with pytest.warns(RuntimeWarning, match="the float16 loss scaler skips this step"):
        assert torch.isnan(fp16(bad, y))


def test_val_metrics_mask_missing_and_leave_one_class_labels_out() -> None:
    from transformers import EvalPrediction

    from woundscore.compare.finetune import compute_metrics, masked_auc

    Y = np.array([[1, 0, 1, -1, 0, 1], [0, 0, 1, 1, 0, 0], [1, 0, -1, 0, 1, 1], [0, 0, 0, 0, -1, 0]])
    P = np.array([[0.9, 0.1, 0.8, 0.5, 0.2, 0.7], [0.2, 0.3, 0.4, 0.9, 0.1, 0.2],
                  [0.6, 0.2, 0.9, 0.1, 0.8, 0.6], [0.1, 0.4, 0.3, 0.2, 0.99, 0.1]])
    res = masked_auc(Y, P)
    assert res["per_label"]["erythema"] == {"auc": None, "n": 4, "positives": 0}  # not estimable
    assert res["per_label"]["edema"] == {"auc": 1.0, "n": 3, "positives": 2}
    assert res["per_label"]["urgency"]["n"] == 3  # the 0.99 on a missing entry is ignored
    assert res["per_label"]["urgency"]["auc"] == 1.0
    assert res["n_estimable"] == 5
    labels = np.where(Y == -1, -100, Y).astype(np.float32)  # as the Trainer hands them back
    out = compute_metrics(EvalPrediction(predictions=P, label_ids=labels))
    assert out["macro_auc"] == pytest.approx(res["macro_auc"])
    assert "auc_erythema" not in out and out["n_estimable_labels"] == 5.0
    none = compute_metrics(EvalPrediction(predictions=P, label_ids=np.zeros_like(labels)))
    assert none["macro_auc"] == 0.5  # chance, never NaN, so checkpoint selection stays defined


def test_model_card_holds_metrics_notice_and_settings() -> None:
    from woundscore.compare.finetune import build_model_card

    per = {name: {"auc": 0.7 + 0.01 * i, "n": 137, "positives": 16 + i} for i, name in enumerate(LABEL_NAMES)}
    per["urgency"] = {"auc": None, "n": 137, "positives": 0}
    card = build_model_card(
        base_model="google/medsiglip-448",
        metrics={"per_label": per, "macro_auc": 0.712, "best_val_macro_auc": 0.731},
        settings={"unfreeze_last": 4, "pooling": "attention", "lr": 5e-5},
        notice="random weights - not MedSigLIP",
    )
    assert card.startswith("---\nbase_model: google/medsiglip-448\n")
    assert "| healing_status | 0.700 | 137 | 16 |" in card
    assert "| urgency | not estimable | 137 | 0 |" in card
    assert "| **macro** | 0.712 | | |" in card
    assert "Best validation macro AUC (checkpoint selection): 0.731" in card
    assert "> **Notice:** random weights - not MedSigLIP" in card
    assert "the attention-pooling head" in card and "last 4 encoder blocks" in card
    assert "**Research use only.**" in card
    assert "| lr | 5e-05 |" in card


def test_finetune_cli_end_to_end_prefix_equals_plain(tiny_dir: Path, mini_release: Path, tmp_path: Path) -> None:
    from woundscore.compare.finetune import finetune
    from woundscore.compare.predictions import read_predictions, read_predictions_meta
    from woundscore.embed.sources import open_source

    out = tmp_path / "ft"
    (out / "trainer" / "checkpoint-99").mkdir(parents=True)  # an earlier run's: must not mix in
    args = ["finetune", str(mini_release), "--out", str(out), "--model", str(tiny_dir), "--unfreeze-last", "1",
            "--batch-size", "2", "--grad-accum", "2", "--max-steps", "2", "--device", "cpu", "--quiet"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert r.output.startswith(
        f"{out / 'predictions.csv'}: 6 test images (+ 3 val rows for thresholds), test macro AUC "
    )
    lines = r.output.splitlines()
    assert len(lines) == 2 and lines[1].startswith(f"{out}: model folder, validation macro AUC (calibrated) ")
    assert lines[1].endswith(f"`wound-classify predict {out} PHOTO` or serve with `wound-serve {out}`")
    for name in ("provenance.json", "thresholds.json", "calibration.json", "ood.npz", "schema.json",
                 "model/config.json", "model/model.safetensors", "model/preprocessor_config.json"):
        assert (out / name).is_file(), name
    ids, P = read_predictions(out / "predictions.csv")
    splits = {s.image_id: s.split for s in open_source(mini_release).samples()}
    assert [splits[i] for i in ids] == ["test"] * 6 + ["val"] * 3  # val rows: thresholds in the report
    ids, P = ids[:6], P[:6]
    meta = read_predictions_meta(out / "predictions.csv")
    assert meta["prefix_cache"] is True and meta["global_steps"] == 2 and meta["unfreeze_last"] == 1
    assert meta["pooling"] == "mean" and meta["dtype"] == "float32" and meta["device"] == "cpu"
    assert 0 < meta["trainable_params"] < meta["total_params"]
    assert meta["inference_ms_per_image"] > 0 and meta["train_seconds"] > 0 and meta["peak_memory_mb"] > 0
    # the checkpoint's notice and the generated release's both reach the sidecar
    assert "random weights - not MedSigLIP" in meta["notice"] and "generated images" in meta["notice"]
    card = (out / "model" / "README.md").read_text()
    assert "last 1 encoder blocks" in card and "| n_test | 6 |" in card
    assert list((out / "trainer" / "runs").rglob("events.out.tfevents.*")), "no TensorBoard log"
    assert not list(out.rglob("*.bin")), "a pickle was left on disk"
    assert not (out / "trainer" / "checkpoint-99").exists()
    ckpt = next((out / "trainer").glob("checkpoint-*"))
    from safetensors import safe_open

    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:  # trainable weights only
        assert not any(k.startswith("base.vision_model.embeddings.") for k in f.keys())

    # The plain path (frozen blocks run every step) trains to the same predictions.
    plain = finetune(mini_release, tmp_path / "plain", model=tiny_dir, unfreeze_last=1, batch_size=2,
                     grad_accum=2, max_steps=2, device="cpu", prefix_cache=False, save_model=False, quiet=True)
    assert list(plain.ids) == list(ids)
    np.testing.assert_allclose(plain.P, P, rtol=0, atol=1e-6)
    assert plain.P_val.shape == (3, 6)
    assert plain.meta["prefix_cache"] is False
    assert not (tmp_path / "plain" / "model").exists()


def test_finetune_cli_errors(tiny_dir: Path, tmp_path: Path) -> None:
    import inspect

    from PIL import Image

    from woundscore.compare.finetune import finetune

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (20, 20), (200, 40, 40)).save(folder / "a.jpg")
    out = tmp_path / "o"
    r = CliRunner().invoke(cli, ["finetune", str(folder), "--out", str(out), "--model", str(tiny_dir),
                                 "--device", "cpu", "-q"])
    assert r.exit_code == 1
    assert r.output == (
        f"Error: {folder}: no 'train' images (train=0, val=0, test=0); the fine-tune needs all three "
        "splits: nothing to train on\n"
    )
    assert not out.exists()  # refused before anything is written
    usage = "Usage: cli finetune [OPTIONS] SOURCE\nTry 'cli finetune --help' for help.\n\n"
    for option, value, why in [
        ("--pooling", "max", "'max' is not one of 'mean', 'attention'."),
        ("--unfreeze-last", "-1", "-1 is not in the range x>=0."),
        ("--target-sensitivity", "0", "0.0 is not in the range 0<x<=1."),
        ("--lr", "0", "0.0 is not in the range x>0."),
    ]:
        r = CliRunner().invoke(cli, ["finetune", str(folder), "--out", str(out), option, value])
        assert (r.exit_code, r.output) == (2, f"{usage}Error: Invalid value for '{option}': {why}\n"), option
        assert not out.exists()
    r = CliRunner().invoke(cli, ["finetune", "--help"])
    assert r.exit_code == 0
    help_text = " ".join(r.output.split())
    assert "wound-compare finetune SurgWound/ --out ft/ --unfreeze-last 4 wound-serve ft/" in help_text
    assert "Exit codes: 0 done; 1 the source, model or settings cannot be used" in help_text
    # every setting of finetune() is a CLI option (save_model and log are for library callers)
    params = set(inspect.signature(finetune).parameters) - {"source", "out_dir", "save_model", "log", "prefix_cache"}
    missing = [p for p in params if f"--{p.replace('_', '-')}" not in r.output]
    assert not missing, missing
    assert "--no-prefix-cache" in r.output


def test_finetune_refuses_too_many_blocks(tiny_dir: Path, mini_release: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["finetune", str(mini_release), "--out", str(tmp_path / "o"), "--model",
                                 str(tiny_dir), "--unfreeze-last", "9", "--device", "cpu", "-q"])
    assert r.exit_code == 1
    assert r.output == (
        f"Error: {tiny_dir}: unfreeze_last=9 is outside 0..2 (the model has 2 encoder blocks)\n"
    )


def test_step_time_runs_both_paths_on_a_small_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/bench_finetune_step.py's step timer (bench-only code, not part of the package)."""
    import importlib
    import sys

    from transformers import SiglipVisionConfig

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    monkeypatch.delitem(sys.modules, "bench_finetune_step", raising=False)
    step_time = importlib.import_module("bench_finetune_step").step_time

    cfg = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                             patch_size=16, image_size=32)
    plain = step_time(cfg, unfreeze_last=1, batch=2, use_prefix=False, steps=1, warmup=0)
    cached = step_time(cfg, unfreeze_last=1, batch=2, use_prefix=True, steps=1, warmup=0)
    assert plain.step_s > 0 and plain.prefix_s_per_image == 0.0
    assert cached.step_s > 0 and cached.prefix_s_per_image > 0
    # Per-epoch estimate: steps x step time + the prefix pass paid once over all epochs.
    assert cached.epoch_s(10, epochs=5) == pytest.approx(5 * cached.step_s + 10 * cached.prefix_s_per_image / 5)
    assert json.dumps(cached.__dict__)  # plain data for bench tables
