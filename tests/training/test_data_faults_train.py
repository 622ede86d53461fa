"""Training through bad data: a kill -9 and resume across skipped samples repeats the losses and the skip
counts bit for bit; a run whose data is half bad stops with a message naming the dataset and reason."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from tests.demo_data import DEMO_HELDOUT, DEMO_TRAIN, SEED
from tests.training.conftest import base_overrides, kill_tree, losses, run_train, start_train
from tests.training.test_resume import _latest, _wait

pytestmark = pytest.mark.multirank


def _half_bad_tar(path, n: int = 12) -> str:
    """n samples written with tarfile: odd ones have broken JSON, even ones are text-only conversations."""
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            turns = [{"from": "human", "value": f"What is {i} plus one?"}, {"from": "gpt", "value": str(i + 1)}]
            data = b"{oops" if i % 2 else json.dumps({"conversations": turns}).encode()
            info = tarfile.TarInfo(f"q{i:03d}.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def _recipe(tmp_path, data_cache, good_weight: float) -> str:
    from nvlm_train.data.synth import demo_data_root

    root = demo_data_root(data_cache, DEMO_TRAIN, DEMO_HELDOUT, SEED)
    datasets = [{"name": "half_bad", "paths": [_half_bad_tar(tmp_path / "half_bad.tar")], "weight": 1 - good_weight}]
    if good_weight:
        datasets.insert(0, {"name": "shapes", "paths": [str(root / "train" / "train-*.tar")], "weight": good_weight})
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps({"name": "faulty", "datasets": datasets}))
    return str(path)


def _last_skips(run_dir) -> dict:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1]).get("skipped_by_dataset", {})


def test_kill_and_resume_across_skipped_samples_is_exact(data_cache, tmp_path):
    recipe = _recipe(tmp_path, data_cache, good_weight=0.7)
    extra = [f"data.recipe={recipe}", "data.eval_recipe=null", "data.max_skip_fraction=1.0"]
    ref = run_train(1, base_overrides(data_cache, tmp_path / "ref", iters=10) + extra)
    assert ref.returncode == 0, ref.stderr[-3000:]
    ref_skips = _last_skips(tmp_path / "ref")
    assert ref_skips["half_bad"]["bad_json"] >= 2, ref_skips

    overrides = base_overrides(data_cache, tmp_path / "run", iters=10) + extra + ["train.save_interval=2"]
    proc = start_train(1, overrides)
    _wait(lambda: _latest(tmp_path / "run") >= 4, proc)
    kill_tree(proc)
    killed_at = _latest(tmp_path / "run")
    assert 4 <= killed_at < 10
    again = run_train(1, overrides)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"at iteration {killed_at}" in again.stderr
    expected, got = losses(tmp_path / "ref"), losses(tmp_path / "run")
    assert got == expected
    assert _last_skips(tmp_path / "run") == ref_skips


def test_half_bad_data_stops_the_run_naming_dataset_and_reason(data_cache, tmp_path):
    """Two data-parallel ranks: both stop together (no rank left waiting in a collective)."""
    recipe = _recipe(tmp_path, data_cache, good_weight=0.0)
    proc = run_train(2, base_overrides(data_cache, tmp_path / "run", iters=20)
                     + [f"data.recipe={recipe}", "data.eval_recipe=null", "data.skip_window=16"], timeout=240)
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert "exitcode  : 2" in proc.stderr, proc.stderr[-3000:]  # torchrun reports each rank's exit status
    assert "of the last 16 samples were skipped" in proc.stderr
    assert "more than data.max_skip_fraction=0.1): half_bad: bad_json x" in proc.stderr
    assert "DataQualityError" not in proc.stderr  # a message, not our traceback (torchrun prints its own)
