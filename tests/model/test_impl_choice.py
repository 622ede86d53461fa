"""model.impl with packed rows: auto never picks a Transformer Engine that would let samples leak."""

from __future__ import annotations

import pytest
import torch

from nvlm_train.config.errors import ConfigError
from nvlm_train.model import specs


@pytest.fixture
def te_installed(monkeypatch):
    """A CUDA machine with Transformer Engine of the version the test sets."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(specs, "transformer_engine_available", lambda: True)

    def set_version(version):
        monkeypatch.setattr(specs, "transformer_engine_version", lambda: version)
    return set_version


def test_recent_te_runs_packed_rows_as_thd(te_installed):
    te_installed((2, 8, 0))
    for impl in ("auto", "transformer_engine"):
        assert specs.resolve_impl(impl, packed=True, bf16=True) == specs.ImplChoice("transformer_engine", True)


def test_old_te_auto_falls_back_to_torch_and_says_why(te_installed):
    te_installed((1, 9, 0))
    choice = specs.resolve_impl("auto", packed=True, bf16=True)
    assert (choice.impl, choice.llm_thd) == ("torch", True)
    assert "Transformer Engine 1.9.0 < 1.10" in choice.note and "torch layers" in choice.note
    with pytest.raises(ConfigError, match=r"cannot run packed rows \(data.packing=true\) here: Transformer Engine 1.9"):
        specs.resolve_impl("transformer_engine", packed=True, bf16=True)
    # One sample per row: plain causal TE attention is exact (padding only follows the sample).
    assert specs.resolve_impl("transformer_engine", packed=False, bf16=True) == specs.ImplChoice(
        "transformer_engine", llm_thd=False)


def test_fp32_te_is_not_trusted_with_thd(te_installed):
    te_installed((2, 8, 0))
    assert "fp32" in specs.resolve_impl("auto", packed=True, bf16=False).note
    with pytest.raises(ConfigError, match="fp32"):
        specs.resolve_impl("transformer_engine", packed=True, bf16=False)


def test_without_te_or_cuda(monkeypatch):
    monkeypatch.setattr(specs, "transformer_engine_available", lambda: False)
    assert specs.resolve_impl("auto") == specs.ImplChoice("torch", True)
    assert specs.resolve_impl("torch") == specs.ImplChoice("torch", True)
    with pytest.raises(ConfigError, match="transformer_engine is not installed"):
        specs.resolve_impl("transformer_engine")
    with pytest.raises(ConfigError, match="expected auto, torch or transformer_engine"):
        specs.resolve_impl("flash")


def test_qwen2_spec_mask_type():
    from megatron.core.transformer.enums import AttnMaskType

    def mask(impl, thd):
        return specs.qwen2_layer_spec(impl, thd).submodules.self_attention.params["attn_mask_type"]

    assert mask("torch", True) == mask("torch", False) == AttnMaskType.causal
    # TE's spec only (built lazily: no TE import for the check).
    original = specs._modules
    specs._modules = lambda impl: original("torch")
    try:
        assert mask("transformer_engine", True) == AttnMaskType.padding_causal
        assert mask("transformer_engine", False) == AttnMaskType.causal
    finally:
        specs._modules = original


def test_a_model_without_thd_refuses_packed_rows():
    """The runtime guard behind data.packing=false on an old TE: a packed batch fails instead of leaking."""
    from nvlm_train.model.nvlm_d import NVLMDModel

    model = NVLMDModel.__new__(NVLMDModel)
    model.llm_thd, model.impl = False, "transformer_engine"
    tokens = torch.zeros(1, 6, dtype=torch.long)
    one = torch.tensor([[0, 4, 6]])
    assert model.packed_params(tokens, torch.tensor([[0, 1, 2, 3, 0, 1]]), one, torch.tensor([1])) is None
    with pytest.raises(RuntimeError, match="attend to each other"):
        model.packed_params(tokens, torch.tensor([[0, 1, 2, 3, 0, 1]]), one, torch.tensor([2]))
