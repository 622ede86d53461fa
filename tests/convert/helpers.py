"""Shared helpers for the conversion tests: the tiny HF source, CLI runs, safetensors comparison."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]


def tiny_spec_matching_preset():
    """An HF NVLM-D spec with exactly the architecture of configs/model/nvlm_d_tiny.yaml."""
    from nvlm_train.hf.export_files import LLMSpec, NVLMDSpec, VisionSpec

    return NVLMDSpec(
        vision=VisionSpec(num_layers=2, hidden_size=80, num_heads=5, ffn_hidden_size=160, image_size=112,
                          patch_size=14),
        llm=LLMSpec(num_layers=4, hidden_size=64, ffn_hidden_size=128, num_heads=4, num_kv_heads=2,
                    vocab_size=1024, max_position_embeddings=4096, rope_theta=10000.0, bos_token_id=None,
                    eos_token_id=2),
        projector_ffn_hidden_size=128,
        img_context_token_id=3,
        dtype="float32",
    )


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "nvlm_train.convert.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"nvlm-convert {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def load_export(folder: Path) -> dict[str, torch.Tensor]:
    index = json.loads((Path(folder) / "model.safetensors.index.json").read_text())
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(index["weight_map"].values())):
        part = load_file(str(Path(folder) / shard))
        assert set(part) == {k for k, v in index["weight_map"].items() if v == shard}
        state.update(part)
    return state


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b), (sorted(set(a) - set(b)), sorted(set(b) - set(a)))
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert torch.equal(a[key].view(-1).view(torch.uint8), b[key].view(-1).view(torch.uint8)), key
