"""Session fixtures: a tiny HF NVLM-D (nvlm_d_tiny's architecture, demo tokenizer) and its conversion."""

from __future__ import annotations

import pytest

from tests.convert.helpers import cli, tiny_spec_matching_preset


@pytest.fixture(scope="session")
def demo_tokenizer():
    from nvlm_train.data.tokenizer import build_demo_tokenizer

    return build_demo_tokenizer()


@pytest.fixture(scope="session")
def hf_source(tmp_path_factory, demo_tokenizer):
    from nvlm_train.hf.testing import build_tiny_export

    return build_tiny_export(tmp_path_factory.mktemp("convert") / "hf_src", spec=tiny_spec_matching_preset(),
                             seed=3, max_shard_bytes=256 * 1024, tokenizer_dir=demo_tokenizer)


@pytest.fixture(scope="session")
def ckpt_tp1(hf_source, tmp_path_factory):
    """HF -> mcore through the CLI (TP1/PP1, one process), matched against the nvlm_d_tiny preset."""
    out = tmp_path_factory.mktemp("convert") / "ckpt_tp1"
    cli("hf-to-mcore", "--hf", str(hf_source), "--out", str(out), "--model-config", "nvlm_d_tiny", "--no-progress")
    return out
