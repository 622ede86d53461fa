"""One tiny trained checkpoint for the end-to-end evaluation tests: the demo model trained a few
steps at TP2 (2 processes) on the shared demo shards -- scoring benchmarks at its last step
(``train.eval_benchmarks``) -- and its HF export."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from nvlm_train.evaluation.benchmark_names import Benchmark
from tests.demo_data import DEMO_HELDOUT, DEMO_TRAIN, SEED
from tests.training.conftest import REPO, base_overrides, run_train

TRAINING_LIMIT = 4  # samples per benchmark scored during training


@dataclass(frozen=True)
class TinyModel:
    checkpoint: Path  # the run's checkpoints/ folder (saved at TP2)
    hf: Path  # its HF export
    data_root: Path  # the demo data root (held-out shards)


@pytest.fixture(scope="session")
def tiny_model(data_cache, tmp_path_factory) -> TinyModel:
    from nvlm_train.data.synth import demo_data_root

    work = tmp_path_factory.mktemp("eval_model")
    from tests.evaluation.fixtures import write_fixtures

    ai2d = write_fixtures(work / "files")[Benchmark.AI2D][0]
    during = ["train.eval_interval=6", "train.eval_benchmarks=[demo,ai2d]",
              f"train.eval_benchmark_data=['ai2d={ai2d}']", f"train.eval_benchmark_limit={TRAINING_LIMIT}"]
    proc = run_train(2, base_overrides(data_cache, work / "run", iters=6) + ["parallel.tp=2", "data.max_tiles=1",
                                                                              *during])
    assert proc.returncode == 0, proc.stderr[-3000:]
    checkpoint = work / "run" / "checkpoints"
    export = subprocess.run([sys.executable, "-m", "nvlm_train.cli.convert", "mcore-to-hf", "--checkpoint",
                             str(checkpoint), "--out", str(work / "hf"), "--dtype", "fp32", "--force",
                             "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert export.returncode == 0, export.stderr[-3000:]
    return TinyModel(checkpoint, work / "hf", demo_data_root(data_cache, DEMO_TRAIN, DEMO_HELDOUT, SEED))
