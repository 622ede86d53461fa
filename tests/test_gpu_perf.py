"""bench/gpu_perf.sh: the smoke run produces every field of every case; --help; failures exit non-zero.

The figures themselves come from an H200 run (bench/gpu_perf.sh without --smoke); here only that the
script, bench/train_step.py, bench/model_step.measure and bench/_perf_tools fit together and report
sane values. The smoke run takes about 35 s on 2 cores (all four cases at once).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_perf.sh"
CASES = ("nvlm_d_2b_sft", "proxy_72b", "proxy_72b_recompute_selective", "proxy_72b_recompute_full",
         "nvlm_d_2b_sft_unfused")
FIGURES = ("tokens_per_s", "step_ms", "peak_memory_gb", "tflops_per_gpu")


def _run(args: list[str], out: Path, timeout: float = 150, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OUT": str(out), "PYTHON": sys.executable, **env})


def _check_figures(where: str, r: dict) -> None:
    for key in FIGURES:
        assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, (where, key, r[key])
    assert "mfu" in r and r["mfu"] is None, (where, r["mfu"])  # CPU: no known device peak (documented)
    shares = r["time_shares"]
    assert set(shares) == {"attention", "gemm", "elementwise", "idle"}, (where, shares)
    assert all(0.0 <= v <= 1.0 for v in shares.values()), (where, shares)
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-6), (where, shares)
    assert shares["gemm"] > 0 and shares["attention"] > 0 and shares["elementwise"] > 0, (where, shares)


def test_gpu_perf_smoke_every_case_every_field(tmp_path):
    proc = _run(["--smoke"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.strip()]
    assert (tmp_path / "gpu_perf.jsonl").read_text().splitlines() == proc.stdout.splitlines()
    *cases, summary = lines
    assert [c["case"] for c in cases] == list(CASES)
    assert summary["summary"]["failed"] == [] and set(summary["summary"]["cases"]) == set(CASES)
    assert "[gpu_perf" in proc.stderr and "step 1/1" in proc.stderr  # progress on stderr
    for r in cases:
        name = r["case"]
        _check_figures(name, r)
        _check_figures(name + " model_step", r["model_step"])
        assert r["model_step"]["vision_cost_layers"] >= 0.0  # what parallel.vision_cost_layers takes
        assert r["model_step"]["head_cost_layers"] > 0.0  # the output layer and loss, on the last stage
        assert r["mfu_note"] and r["peak_tflops"] is None and r["target_met"] is None
        assert isinstance(r["trainer_overhead_ms"], float)
        rows = r["micro_batch_size"] * r["num_microbatches"]
        # every benchmark sample: a 3:2 image = 6 tiles + thumbnail, text filling the row (real tokens only)
        assert r["tiles_per_step"] == 7 * rows, r["tiles_per_step"]
        assert r["padding_fraction"] < 0.02 and r["real_tokens_per_step"] > 0.98 * rows * r["seq_length"]
        assert r["freeze"]["vision"] is True and r["dtype"] == "fp32"
        assert r["time_shares_basis"] == "CPU op self time"
    by_name = {r["case"]: r for r in cases}
    assert by_name["nvlm_d_2b_sft"]["mfu_target"] == 0.4 and by_name["proxy_72b"]["mfu_target"] == 0.5
    for name in CASES[1:4]:  # the proxy keeps the layers the memory estimate allows (3 of tiny's 4 here)
        r = by_name[name]
        assert r["proxy_estimate"]["proxy_layers"] == r["language_layers"] == 3
    assert by_name["proxy_72b"]["recompute"]["language"] is None
    assert by_name["proxy_72b_recompute_selective"]["recompute"]["language"] == "selective"
    assert by_name["proxy_72b_recompute_full"]["recompute"]["language"] == "full"
    unfused = by_name["nvlm_d_2b_sft_unfused"]
    assert "model.fusion.bias_activation=false" in unfused["overrides"] and not any(unfused["fusions"].values())
    assert set(unfused["fusions"]) == {"bias_activation", "bias_dropout_add", "rope", "grad_accumulation",
                                       "cross_entropy"}


def test_gpu_perf_help_and_failures(tmp_path):
    proc = _run(["--help"], tmp_path, timeout=30)
    assert proc.returncode == 0 and "Usage: bash bench/gpu_perf.sh" in proc.stdout
    for word in ("--smoke", "--proxy-layers", "EXTRA_OVERRIDES", "OPTIONAL_OVERRIDES", "trainer_overhead_ms"):
        assert word in proc.stdout, word
    proc = _run(["--no-such-flag"], tmp_path, timeout=30)
    assert proc.returncode == 2 and "unknown argument" in proc.stderr
    proc = _run(["--smoke", "--cases", "no_such_case"], tmp_path, timeout=60)
    assert proc.returncode != 0
    first = json.loads(proc.stdout.splitlines()[0])
    assert first == {"case": "no_such_case", "error": "unknown case", "rc": 2}
    assert json.loads(proc.stdout.splitlines()[-1])["summary"]["failed"] == ["no_such_case"]


def test_time_shares_and_kernel_names():
    sys.path.insert(0, str(ROOT / "bench"))
    import torch
    from _perf_tools import classify, time_shares

    a = torch.randn(256, 256)
    q = torch.randn(1, 2, 64, 32)

    def fn():
        torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
        (a @ a).relu_().sum()

    r = time_shares(fn, on_gpu=False)
    shares = r["time_shares"]
    assert sum(shares.values()) == pytest.approx(1.0) and shares["gemm"] > 0 and shares["attention"] > 0
    assert r["profiled_step_ms"] > 0
    # names of H100/H200 kernels (cuBLAS, cuBLASLt, flash / cuDNN attention) and CPU ops
    assert classify("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", kernel=True) == "gemm"
    assert classify("nvjet_hsh_256x128_64x4_1x2_h_bz_coopA_NNT", kernel=True) == "gemm"
    assert classify("void flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128>>", kernel=True) == "attention"
    assert classify("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16", kernel=True) == "attention"
    assert classify("void at::native::vectorized_elementwise_kernel<4>", kernel=True) == "elementwise"
    assert classify("aten::addmm", kernel=False) == "gemm" and classify("aten::add_", kernel=False) == "elementwise"
    assert classify("aten::_scaled_dot_product_flash_attention_for_cpu", kernel=False) == "attention"
