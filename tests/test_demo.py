"""A fast version of `make demo` end to end: every stage produces what it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.multirank
def test_fast_demo_end_to_end(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "nvlm_train.cli.demo", "--fast", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "tensor parallelism (TP2)" in out
    result = json.loads(out.strip().splitlines()[-1])
    for key in ("accuracy", "megatron_accuracy", "run_dir", "checkpoint", "hf_dir", "heldout"):
        assert key in result
    # 1. data; 2. training with periodic checkpoints and live progress
    assert result["heldout"] and all(Path(p).is_file() for p in result["heldout"])
    ckpts = Path(result["checkpoint"])
    assert (ckpts / "latest_checkpointed_iteration.txt").read_text().strip() == "12"
    assert (ckpts / "iter_0000006").is_dir() and (ckpts / "iter_0000012").is_dir()
    assert "iter      2 |" in out
    # 3./4. both evaluations ran on the held-out set and agree closely (same weights, same prompts)
    assert 0.0 <= result["megatron_accuracy"] <= 1.0 and 0.0 <= result["accuracy"] <= 1.0
    assert abs(result["accuracy"] - result["megatron_accuracy"]) <= 0.02 + 1e-9
    hf = Path(result["hf_dir"])
    assert (hf / "config.json").is_file() and (hf / "modeling_nvlm_d.py").is_file()
    # 5. the loss curve is a real image
    with Image.open(result["loss_curve"]) as img:
        assert img.size == (800, 480)
    # Re-running reuses the data, the finished run and exports again quickly.
    again = subprocess.run([sys.executable, "-m", "nvlm_train.cli.demo", "--fast", "--workdir", str(tmp_path)],
                           capture_output=True, text=True, timeout=900, cwd=REPO)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "reusing synthetic shards" in again.stdout
    assert json.loads(again.stdout.strip().splitlines()[-1])["megatron_accuracy"] == result["megatron_accuracy"]


def test_a_run_from_other_demo_settings_is_set_aside_not_resumed(tmp_path, capsys):
    from nvlm_train.cli.demo import set_aside_stale_run

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)  # e.g. left by an older demo version: no spec file
    set_aside_stale_run(run, {"iters": 1600})
    stale = [p for p in tmp_path.iterdir() if p.name.startswith("run.stale-")]
    assert len(stale) == 1 and (stale[0] / "checkpoints").is_dir()
    assert "moved it to" in capsys.readouterr().out
    (run / "metrics.jsonl").write_text("{}\n")
    set_aside_stale_run(run, {"iters": 1600})  # same settings: reused as it is
    assert (run / "metrics.jsonl").is_file() and len(list(tmp_path.glob("run.stale-*"))) == 1
    set_aside_stale_run(run, {"iters": 400})
    assert not (run / "metrics.jsonl").exists() and json.loads((run / "demo_spec.json").read_text()) == {
        "iters": 400}
