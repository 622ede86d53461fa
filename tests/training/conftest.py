"""A training launcher for tests (the demo data fixture ``data_cache`` lives in tests/conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.demo_data import DEMO_HELDOUT, DEMO_TRAIN, SEED

REPO = Path(__file__).resolve().parents[2]


def base_overrides(cache: Path, run_dir: Path, iters: int = 4) -> list[str]:
    return [
        "experiment=demo", f"run.dir={run_dir}", "run.wandb_mode=disabled", f"data.cache_dir={cache}",
        f"data.demo_train_samples={DEMO_TRAIN}", f"data.demo_heldout_samples={DEMO_HELDOUT}",
        f"train.seed={SEED}", f"train.iters={iters}", "train.log_interval=1", "train.eval_interval=0",
        "train.save_interval=0", "optimizer.warmup_iters=1", "train.micro_batch_size=2",
        "train.global_batch_size=4", "train.seq_length=192", "data.max_tiles=2",
    ]


TRAIN_MODULE = "nvlm_train.cli.train"


def train_command(nproc: int, overrides: list[str], module: str = TRAIN_MODULE) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", module, *overrides]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", module, *overrides]


def run_train(nproc: int, overrides: list[str], timeout: float = 300, env: dict | None = None,
              module: str = TRAIN_MODULE) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(train_command(nproc, overrides, module), capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=full_env)


def start_train(nproc: int, overrides: list[str], env: dict | None = None) -> subprocess.Popen:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(train_command(nproc, overrides), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=REPO, env=full_env, start_new_session=True)


def kill_tree(proc: subprocess.Popen) -> None:
    """kill -9 a launcher and every worker at once (torchrun puts workers in their own sessions)."""
    import psutil

    victims = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in victims:
        p.kill()
    psutil.wait_procs(victims, timeout=30)
    proc.wait()


def losses(run_dir: Path) -> dict[int, float]:
    out = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out[rec["iteration"]] = rec["loss"]
    return out
