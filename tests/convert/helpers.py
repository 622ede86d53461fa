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
# The released nvidia/NVLM-D-72B config.json, verbatim (a copy of shared/reference/).
RELEASED_CONFIG = REPO / "tests" / "fixtures" / "nvlm_d_72b_config.json"
TINY_VISION = {"num_hidden_layers": 2, "hidden_size": 80, "num_attention_heads": 5, "intermediate_size": 160,
               "image_size": 112}
TINY_LLM = {"num_hidden_layers": 4, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": 1024, "max_position_embeddings": 4096, "rope_theta": 10000.0,
            "bos_token_id": None, "eos_token_id": 2}


def released_tiny_config() -> dict:
    """The released config.json shrunk to nvlm_d_tiny's sizes; everything else as published (llama
    spelling, dynamic rope scaling, no img_context_token_id, no projector size: it is the LLM's FFN)."""
    cfg = json.loads(RELEASED_CONFIG.read_text())
    cfg["vision_config"].update(TINY_VISION)
    cfg["llm_config"].update(TINY_LLM)
    cfg["force_image_size"] = TINY_VISION["image_size"]
    return cfg


def write_released_tiny_export(out: Path, tokenizer_dir: Path, seed: int = 3) -> Path:
    """A tiny HF directory in the released layout: the shrunk released config.json and random fp32
    weights in its shapes (7 zero dummy ViT heads), sharded safetensors, modeling files, a tokenizer."""
    import shutil

    from nvlm_train.convert.hf_files import copy_modeling_files
    from nvlm_train.hf.configuration_nvlm_d import NVLM_D_Config
    from nvlm_train.hf.modeling_nvlm_d import NVLM_D_Model
    from tests.fixtures.hf_builders import TOKENIZER_FILES, randomize_, save_sharded_safetensors

    cfg = released_tiny_config()
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    torch.manual_seed(seed)
    model = NVLM_D_Model(NVLM_D_Config(**{k: v for k, v in cfg.items() if k not in ("auto_map", "architectures")}))
    save_sharded_safetensors(randomize_(model.float(), seed).state_dict(), out, max_shard_bytes=256 * 1024)
    copy_modeling_files(out)
    for name in TOKENIZER_FILES:
        if (Path(tokenizer_dir) / name).is_file():
            shutil.copy2(Path(tokenizer_dir) / name, out / name)
    return out


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "nvlm_train.cli.convert", *args], cwd=REPO, env=env,
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
