"""``nvlm-train`` starts a stage from ``hf-to-mcore``'s output at TP2 and at PP2 (converted weights, not an init)."""

from __future__ import annotations

import pytest

from tests.training.conftest import base_overrides, losses, run_train

pytestmark = pytest.mark.multirank


def test_nvlm_train_trains_from_a_converted_checkpoint_at_tp2_and_pp2(ckpt_tp1, data_cache, tmp_path):
    runs = {}
    for name, layout in (("tp2", "parallel.tp=2"), ("pp2", "parallel.pp=2"), ("fresh", "parallel.tp=2")):
        extra = [] if name == "fresh" else [f"checkpoint.init_from={ckpt_tp1}"]
        proc = run_train(2, base_overrides(data_cache, tmp_path / name, iters=3) + [layout, *extra])
        assert proc.returncode == 0, proc.stderr[-3000:]
        if name != "fresh":
            assert "initialised model weights from" in proc.stderr and "from iteration 0" in proc.stderr
        runs[name] = losses(tmp_path / name)
    # The same converted weights at TP2 and at PP2: the same losses, step after step (it trains).
    for it in (1, 2, 3):
        assert abs(runs["tp2"][it] - runs["pp2"][it]) <= 1e-5 * abs(runs["tp2"][it]), (it, runs)
    assert runs["tp2"][3] != runs["tp2"][1]
    # ... and they are the converted weights: a run from a fresh init sees different losses.
    assert abs(runs["fresh"][1] - runs["tp2"][1]) > 1e-3, runs
