"""Shared bits of the launcher tests: repository paths, tiny-run overrides, output readers."""

from __future__ import annotations

import json
import math
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


def reached_iteration(log: Path) -> int:
    """The last iteration rank 0 logged (console lines ``iter      N ...``), 0 if none yet."""
    its = [int(line.split()[1]) for line in Path(log).read_text(errors="replace").splitlines()
           if line.startswith("iter ") and len(line.split()) > 1 and line.split()[1].isdigit()]
    return its[-1] if its else 0


def wait_for_iteration(log: Path, iteration: int, timeout: float, proc=None) -> int:
    """Wait until rank 0 logged ``iteration`` (or later); returns the iteration logged last."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reached = reached_iteration(log) if Path(log).exists() else 0
        if reached >= iteration:
            return reached
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before iteration {iteration}:\n{tail(log)}")
        time.sleep(0.2)
    raise AssertionError(f"iteration {iteration} not reached in {timeout:.0f} s:\n{tail(log)}")


def tmp_checkpoints(run_dir: Path) -> list[str]:
    """Leftovers of cut-short saves (``iter_*.tmp``, the tracker's temporary file)."""
    return sorted(p.name for p in (Path(run_dir) / "checkpoints").glob("*.tmp"))


def processes_in_group(pgid: int) -> list[str]:
    """``pid comm`` of the live (non-zombie) processes of a process group."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm_end = text.rfind(")")
        fields = text[comm_end + 2:].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(f"{stat.parent.name} {text[text.find('(') + 1:comm_end]}")
    return found


def assert_contiguous_finite(metrics: list[dict], last: int) -> None:
    """Each iteration 1..last logged exactly once, with a finite loss."""
    iterations = [m["iteration"] for m in metrics]
    assert iterations == list(range(1, last + 1)), iterations
    assert all(math.isfinite(m["loss"]) for m in metrics), [m["loss"] for m in metrics]


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (torchrun puts each worker in a session of its own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
