"""bench/train_step.py runs the real trainer step and reports throughput as one JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_train_step_bench_reports_throughput():
    proc = subprocess.run([sys.executable, "bench/train_step.py", "--config", "nvlm_d_tiny", "--steps", "2",
                           "--warmup", "1"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["step_time_s"] > 0 and result["tokens_per_s"] > 0 and result["tflops_per_gpu"] > 0
    assert result["dtype"] == "fp32" and result["device"] == "cpu" and result["mfu"] is None
    assert result["peak_memory_gb"] > 0
    assert 0 <= result["padding_fraction"] < 1  # tokens_per_s counts real tokens only
    help_ = subprocess.run([sys.executable, "bench/train_step.py", "--help"], capture_output=True, text=True,
                           cwd=REPO, timeout=60)
    assert help_.returncode == 0 and "--steps" in help_.stdout
