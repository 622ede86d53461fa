"""``nvlm-model-summary`` prints the published exact parameter counts for NVLM-D-72B."""

from __future__ import annotations

import json
import subprocess
import sys


def _summary(*overrides):
    proc = subprocess.run([sys.executable, "-m", "nvlm_train.cli.model_summary", *overrides],
                          capture_output=True, text=True, timeout=300)
    return proc


def test_72b_counts_match_design():
    proc = _summary("model=nvlm_d_72b")
    assert proc.returncode == 0, proc.stderr
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert counts["vision"] == 5_536_496_000
    assert counts["projector"] == 620_717_056
    assert counts["language"] == 72_706_203_648
    assert counts["total"] == 78_863_416_704
    # the released files store the 7 zero dummy ViT heads too (45 layers x 11,470,592 zeros)
    assert counts["stored_released_layout"] == 79_379_593_344


def test_tiny_counts_and_bad_override():
    proc = _summary("model=nvlm_d_tiny", "model.language.num_layers=2")
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    # LLM by hand: embeddings 2 x 1024 x 64; per layer: qkv (64+2x2x16) x 64 + bias 128, proj 64x64,
    # fc1 2x128x64, fc2 64x128, 2 norms 2x64; final norm 64.
    per_layer = 128 * 64 + 128 + 64 * 64 + 2 * 128 * 64 + 64 * 128 + 2 * 64
    assert counts["language"] == 2 * 1024 * 64 + 2 * per_layer + 64
    assert counts["projector"] == 2 * 320 + 320 * 128 + 128 * 64
    bad = _summary("model=nvlm_d_tiny", "model.vision.num_attention_heads=3")
    assert bad.returncode == 2 and "not divisible" in bad.stderr
    assert _summary("--help").returncode == 0
