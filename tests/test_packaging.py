"""``pip install .`` (a wheel, not editable) into a fresh venv works outside the checkout: the console
scripts find the configs and recipes shipped inside the package, train, synthesise data, convert and
summarise. The venv borrows this environment's third-party packages through a .pth line (no network);
nvlm_train itself comes only from the wheel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.demo_data import SEED

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(cmd: list, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHONPATH", "NVLM_"))}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """bin/ of a fresh venv holding the wheel of this checkout."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"  # a copy of the sources: setuptools builds in the source tree (build/), keep the checkout clean
    listed = _run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO).stdout.splitlines()
    for name in listed:
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", root / "dist", src],
         cwd=root)
    (wheel,) = (root / "dist").glob("nvlm_train-*.whl")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=root)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    (site / "borrowed_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    _run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--no-deps", "-q", wheel],
         cwd=root)
    return venv / "bin"


def test_installed_package_runs_outside_the_checkout(installed, tmp_path):
    where = _run([installed / "python", "-c", "import nvlm_train, nvlm_train.resources as r; "
                  "print(nvlm_train.__file__); print(r.resource_dir('configs'))"], cwd=tmp_path).stdout.split()
    assert str(REPO) not in where[0] and where[1].endswith("nvlm_train/_resources/configs"), where

    data = tmp_path / "data"
    _run([installed / "nvlm-data", "-q", "synth", data, "--train", "16", "--heldout", "4"], cwd=tmp_path)
    assert {"train", "heldout"} <= {p.name for p in data.iterdir()}

    summary = json.loads(_run([installed / "nvlm-model-summary", "model=nvlm_d_tiny"], cwd=tmp_path).stdout)
    assert summary["model"] == "nvlm_d_tiny" and summary["total"] > 0

    run = tmp_path / "run"
    _run([installed / "nvlm-train", "experiment=demo", "train.iters=3", f"run.dir={run}", "run.wandb_mode=disabled",
          f"data.cache_dir={tmp_path / 'cache'}", "data.demo_train_samples=40", "data.demo_heldout_samples=4",
          f"train.seed={SEED}", "train.micro_batch_size=2", "train.global_batch_size=2", "train.seq_length=192",
          "data.max_tiles=2", "train.eval_interval=0", "optimizer.warmup_iters=1"], cwd=tmp_path)
    assert (run / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == "3"

    _run([installed / "nvlm-convert", "mcore-to-hf", "--checkpoint", run / "checkpoints", "--out", tmp_path / "hf",
          "--no-progress"], cwd=tmp_path)
    assert (tmp_path / "hf" / "modeling_nvlm_d.py").is_file() and (tmp_path / "hf" / "config.json").is_file()
