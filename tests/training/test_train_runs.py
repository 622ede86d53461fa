"""End-to-end training runs on CPU: learning, layout parity of the loss curve, metrics and errors."""

from __future__ import annotations

import json

import pytest

from tests.training.conftest import base_overrides, losses, run_train

pytestmark = pytest.mark.multirank


def test_tiny_model_learns_on_demo_data(data_cache, tmp_path):
    run = tmp_path / "learn"
    proc = run_train(1, base_overrides(data_cache, run, iters=40) + [
        "optimizer.lr=3e-3", "optimizer.warmup_iters=4", "train.eval_interval=20", "train.eval_iters=2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    curve = losses(run)
    first = sum(curve[i] for i in (1, 2, 3)) / 3
    last = sum(curve[i] for i in (38, 39, 40)) / 3
    assert last < first - 2.0, (first, last)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    keys = {"iteration", "loss", "lr", "grad_norm", "tokens_per_s", "tflops_per_gpu", "consumed_samples",
            "padding_fraction", "real_tokens", "padded_tokens"}
    assert keys <= records[-1].keys()
    last = records[-1]
    assert 0 <= last["padding_fraction"] < 1 and last["real_tokens"] < last["padded_tokens"]
    assert last["padding_fraction"] == pytest.approx(1 - last["real_tokens"] / last["padded_tokens"])
    assert records[-1]["consumed_samples"] > records[0]["consumed_samples"] > 0
    vals = [r["val_loss"] for r in records if r.get("val_loss") is not None]
    assert len(vals) == 2 and vals[1] < vals[0]
    assert (run / "checkpoints" / "iter_0000040" / "metadata.json").is_file()
    assert "iter     40" in proc.stdout


@pytest.fixture(scope="module")
def tp1_curve(data_cache, tmp_path_factory):
    run = tmp_path_factory.mktemp("tp1")
    proc = run_train(1, base_overrides(data_cache, run))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return losses(run)


@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2), (2, 2)], ids=["tp2", "pp2", "tp2pp2"])
def test_loss_curve_is_layout_independent(data_cache, tmp_path, tp1_curve, tp, pp):
    proc = run_train(tp * pp, base_overrides(data_cache, tmp_path) + [f"parallel.tp={tp}", f"parallel.pp={pp}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    curve = losses(tmp_path)
    assert curve.keys() == tp1_curve.keys() == {1, 2, 3, 4}
    for it, ref in tp1_curve.items():
        assert abs(curve[it] - ref) <= 1e-5 * abs(ref), (it, curve[it], ref)


def test_tiles_cut_on_the_device_train_identically(data_cache, tmp_path, tp1_curve):
    """data.tile_on=device (the GPU default), at PP2 so the second stage also skips the images."""
    proc = run_train(2, base_overrides(data_cache, tmp_path) + ["data.tile_on=device", "parallel.pp=2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tiles cut on the device" in proc.stderr
    curve = losses(tmp_path)
    assert curve.keys() == tp1_curve.keys()
    for it, ref in tp1_curve.items():
        assert abs(curve[it] - ref) <= 1e-5 * abs(ref), (it, curve[it], ref)


def test_bad_config_fails_before_building(data_cache, tmp_path):
    proc = run_train(1, base_overrides(data_cache, tmp_path) + ["train.global_batch_size=5"])
    assert proc.returncode == 2
    assert "train.global_batch_size=5 is not divisible" in proc.stderr
    proc = run_train(1, base_overrides(data_cache, tmp_path) + ["train.seq_length=64", "data.max_tiles=6"])
    assert proc.returncode == 2 and "cannot hold one image" in proc.stderr
    assert not (tmp_path / "checkpoints").exists()
