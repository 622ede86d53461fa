"""Session fixtures: the tiny released-layout HF export (random fp32 weights) and its mcore checkpoint."""

from __future__ import annotations

import pytest

from tests.convert.helpers import cli, write_released_tiny_export


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
    from nvlm_train.data.tokenizer import build_demo_tokenizer

    return write_released_tiny_export(tmp_path_factory.mktemp("inference") / "hf", build_demo_tokenizer())


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_hf, tmp_path_factory):
    """The same weights as a megatron checkpoint (TP1/PP1; loads at any layout)."""
    out = tmp_path_factory.mktemp("inference") / "ckpt"
    cli("hf-to-mcore", "--hf", str(tiny_hf), "--out", str(out), "--model-config", "nvlm_d_tiny", "--no-progress")
    return out
