"""Session fixtures: a tiny HF NVLM-D (nvlm_d_tiny's architecture, demo tokenizer) and its conversion."""

from __future__ import annotations

import pytest

from tests.convert.helpers import cli, write_released_tiny_export


@pytest.fixture(scope="session")
def demo_tokenizer():
    from nvlm_train.data.tokenizer import build_demo_tokenizer

    return build_demo_tokenizer()


@pytest.fixture(scope="session")
def hf_source(tmp_path_factory, demo_tokenizer):
    """A tiny checkpoint as released: the released config.json shrunk to tiny sizes, 7 dummy ViT heads."""
    return write_released_tiny_export(tmp_path_factory.mktemp("convert") / "hf_src", demo_tokenizer)


@pytest.fixture(scope="session")
def ckpt_tp1(hf_source, tmp_path_factory):
    """HF -> mcore through the CLI (TP1/PP1, one process), matched against the nvlm_d_tiny preset."""
    out = tmp_path_factory.mktemp("convert") / "ckpt_tp1"
    cli("hf-to-mcore", "--hf", str(hf_source), "--out", str(out), "--model-config", "nvlm_d_tiny", "--no-progress")
    return out
