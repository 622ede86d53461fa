"""Shared bits of the launcher tests: repository paths, tiny-run overrides, output readers."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TORCHRUN_SH = REPO / "launch" / "torchrun.sh"
TRAIN_SBATCH = REPO / "launch" / "slurm" / "train.sbatch"


def tiny_overrides(cache_dir: Path, **extra) -> list[str]:
    """The tiny CPU demo run (like the README's 2-rank command), plus ``key=value`` extras."""
    base = {
        "experiment": "demo",
        "run.wandb_mode": "disabled",
        "data.demo_train_samples": 200,
        "data.demo_heldout_samples": 20,
        "data.cache_dir": str(cache_dir),
        "optimizer.warmup_iters": 1,
        "train.log_interval": 1,
        "train.eval_interval": 0,
        # smaller steps than the demo's (16 rows), with multi-tile images: quick, and tiles get split
        "train.micro_batch_size": 4,
        "train.global_batch_size": 8,
        "data.max_tiles": 2,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for launched runs: this interpreter, one thread per rank, no wandb."""
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", WANDB_MODE="disabled",
               PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    assert path.exists(), f"{path} missing; run dir has {sorted(p.name for p in Path(run_dir).glob('*'))}"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def latest_checkpoint(run_dir: Path) -> int:
    tracker = Path(run_dir) / "checkpoints" / "latest_checkpointed_iteration.txt"
    assert tracker.exists(), f"{tracker} missing"
    it = int(tracker.read_text().strip())
    assert (Path(run_dir) / "checkpoints" / f"iter_{it:07d}").is_dir(), f"iter_{it:07d} missing"
    return it


def wait_for_line(path: Path, prefix: str, timeout: float, proc=None) -> None:
    """Wait until a line of ``path`` starts with ``prefix`` (e.g. the first ``iter`` console line)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and any(line.startswith(prefix) for line in path.read_text(errors="replace").splitlines()):
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before '{prefix}':\n{tail(path)}")
        time.sleep(0.25)
    raise AssertionError(f"no line starting with '{prefix}' in {path} after {timeout:.0f} s:\n{tail(path)}")


def tail(path: Path, chars: int = 4000) -> str:
    return Path(path).read_text(errors="replace")[-chars:] if Path(path).exists() else f"({path} missing)"
