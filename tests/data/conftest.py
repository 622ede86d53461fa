"""Shared fixtures: the demo tokenizer and a small synthetic dataset, built once per session."""

from __future__ import annotations

import pytest

from nvlm_train.data.loader import DataConfig
from nvlm_train.data.synth import write_synthetic_shards
from nvlm_train.data.tokenizer import TextTokenizer, build_demo_tokenizer


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory):
    return build_demo_tokenizer(tmp_path_factory.mktemp("tok") / "demo")


@pytest.fixture(scope="session")
def tok(tok_dir):
    return TextTokenizer(tok_dir)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write_synthetic_shards(root, n_train=120, n_heldout=20, seed=0, n_captions=20, samples_per_shard=50)
    return root


@pytest.fixture
def small_cfg(tok_dir, synth_root, tmp_path):
    """Tiny sizes so tests stay fast on 2 cores: 28 px tiles, 4 tokens per tile."""
    return DataConfig(recipe="demo", data_root=str(synth_root), tokenizer_dir=str(tok_dir), seq_length=160,
                      micro_batch_size=2, max_tiles=4, image_size=28, tokens_per_tile=4, seed=1,
                      cache_dir=str(tmp_path / "cache"))
