import pytest

from tests.fixtures.hf_builders import build_tiny_export


@pytest.fixture(scope="session")
def tiny_export_dir(tmp_path_factory):
    """A complete tiny HF NVLM-D export directory (random fp32 weights, tiny tokenizer)."""
    return build_tiny_export(tmp_path_factory.mktemp("nvlm_d_hf") / "export", seed=0)
