"""Fused kernels (``model.fusion``): equal to the unfused path, and handed to megatron-core as asked.

The fused paths are megatron-core's own formulations (custom autograd functions with hand-written
backwards for SwiGLU, bias-GELU and the cross entropy; the fused bias-dropout-add). The workers run
them with ``TORCH_COMPILE_DISABLE=1``: megatron's ``jit_fuser`` is ``torch.compile``, whose CPU
compilation would cost minutes here and proves nothing about the math. TE's RoPE and gradient
accumulation fusions need Transformer Engine / apex kernels: checked by what reaches megatron-core.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from nvlm_train.config.errors import ConfigError
from nvlm_train.config.model import FusionConfig
from nvlm_train.model import fusions as fusions_mod
from nvlm_train.model.fusions import Fusions, resolve_fusions
from tests.dist import run_ranks
from tests.model.batches import PARITY_ROWS, build_batch

SEQ = 96


def _loss_and_grads(model_cfg, fusion: FusionConfig, batches):
    from nvlm_train.config.parallel import ParallelConfig
    from nvlm_train.model.builder import build_model
    from nvlm_train.model.gather import gather_full

    cfg = dataclasses.replace(model_cfg, fusion=fusion)
    built = build_model(cfg, ParallelConfig())
    chunk = built.chunks[0]
    total = 0.0
    for batch in batches:
        loss = chunk(batch["tokens"], batch["position_ids"], labels=batch["labels"],
                     pixel_values=batch["pixel_values"], seq_boundaries=batch["seq_boundaries"],
                     num_samples=batch["num_samples"])  # [b, s]
        step = (loss * batch["loss_mask"]).sum()
        step.backward()
        total += float(step)
    return total, gather_full(built, cfg, "grad"), built.fusions, chunk


def fusion_worker(rank, world):
    from nvlm_train.config.parallel import ParallelConfig
    from nvlm_train.config.store import load_model_config
    from nvlm_train.model.loss import token_cross_entropy
    from nvlm_train.runtime.initialize import initialize_distributed

    model_cfg = load_model_config("nvlm_d_tiny")
    initialize_distributed(ParallelConfig(), seed=1, num_language_layers=model_cfg.language.num_layers)
    batches = [build_batch(rows, SEQ, model_cfg.tokens_per_tile, model_cfg.language.image_token_id,
                           model_cfg.language.vocab_size, model_cfg.vision.image_size, seed=20 + i)
               for i, rows in enumerate(PARITY_ROWS)]
    plain, plain_grads, plain_f, _ = _loss_and_grads(model_cfg, FusionConfig(False, False, False, False, False),
                                                     batches)
    fused, fused_grads, fused_f, chunk = _loss_and_grads(
        model_cfg, FusionConfig(bias_activation=True, bias_dropout_add=True), batches)
    config = chunk.config  # what megatron-core's layers read
    vision = chunk.vision_model.config

    # Generation-style forward (per-token positions) with the RoPE fusion flag on: runs unfused
    # without gradients, refused with them.
    b = batches[0]
    mask = torch.zeros(b["tokens"].shape[0], 1, SEQ, SEQ, dtype=torch.bool).triu_(1)  # causal, True = masked
    with torch.no_grad():
        want = chunk(b["tokens"], b["position_ids"], pixel_values=b["pixel_values"], attention_mask=mask)
        config.apply_rope_fusion = True
        got = chunk(b["tokens"], b["position_ids"], pixel_values=b["pixel_values"], attention_mask=mask)
    restored = config.apply_rope_fusion
    try:
        chunk(b["tokens"], b["position_ids"], pixel_values=b["pixel_values"], attention_mask=mask)
        refused = None
    except RuntimeError as exc:
        refused = str(exc)
    config.apply_rope_fusion = False

    # Cross entropy in bf16: megatron's fused vocab-parallel version vs the unfused one, 5 padded columns.
    gen = torch.Generator().manual_seed(3)
    logits = (torch.randn(12, 2, 64, generator=gen) * 3).to(torch.bfloat16)
    labels = torch.randint(0, 59, (12, 2), generator=gen)
    out = {}
    for name, fused_ce in (("plain", False), ("fused", True)):
        x = logits.clone().requires_grad_(True)
        loss = token_cross_entropy(x.clone(), labels, real_vocab=59, fused=fused_ce)  # [s, b]
        (loss * torch.linspace(0.5, 1.5, 24).reshape(12, 2)).sum().backward()
        out[name] = (loss.detach().float(), x.grad.float())
    # An independent reference: torch's cross entropy over the 59 real columns, in fp32.
    ref = torch.nn.functional.cross_entropy(logits.float()[..., :59].reshape(-1, 59), labels.reshape(-1),
                                            reduction="none").reshape(12, 2)
    # Why the ViT keeps its GELU: megatron's fused bias-GELU is the tanh approximation, not InternViT's erf.
    from megatron.core.fusions.fused_bias_gelu import bias_gelu_impl

    x, bias = torch.linspace(-4, 4, 101).reshape(1, 101), torch.zeros(101)
    gelu_gap = float((bias_gelu_impl(x, bias) - torch.nn.functional.gelu(x)).abs().max())
    return {"gelu_gap": gelu_gap, "plain": plain, "fused": fused, "grads": (plain_grads, fused_grads),
            "resolved": (plain_f, fused_f),
            "megatron": (config.bias_activation_fusion, config.bias_dropout_fusion, vision.bias_activation_fusion,
                         vision.bias_dropout_fusion),
            "rope_unfused_equal": torch.equal(want, got), "flag_restored": restored, "refused": refused,
            "ce": out, "ce_ref": ref}


@pytest.fixture(scope="module")
def fused_run(monkeypatch_module):
    monkeypatch_module.setenv("TORCH_COMPILE_DISABLE", "1")  # inherited by the spawned worker
    return run_ranks(fusion_worker, 1)[0]


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_bias_activation_and_bias_dropout_add_fusions_equal_unfused(fused_run):
    r = fused_run
    assert r["resolved"] == (Fusions(), Fusions(bias_activation=True, bias_dropout_add=True))
    assert r["megatron"] == (True, True, False, True)  # SwiGLU (LLM); the ViT's residuals, not its GELU
    assert r["gelu_gap"] > 1e-4  # tanh-approximate GELU: a different function from InternViT's
    assert abs(r["fused"] - r["plain"]) <= 1e-5 * abs(r["plain"])
    plain, fused = r["grads"]
    assert plain.keys() == fused.keys()
    for name, g in plain.items():
        assert (fused[name] - g).norm() <= 1e-5 * g.norm() + 1e-12, name


def test_per_token_rope_runs_unfused_without_gradients(fused_run):
    assert fused_run["rope_unfused_equal"] and fused_run["flag_restored"] is True
    assert "model.fusion.rope is on" in fused_run["refused"] and "model.fusion.rope=false" in fused_run["refused"]


def test_fused_cross_entropy_equals_unfused_in_bf16(fused_run):
    (plain_loss, plain_grad), (fused_loss, fused_grad) = fused_run["ce"]["plain"], fused_run["ce"]["fused"]
    ref = fused_run["ce_ref"]
    assert torch.allclose(plain_loss, ref, rtol=1e-5, atol=1e-5)  # fp32 math inside, padding ignored
    assert torch.allclose(fused_loss, ref, rtol=1e-5, atol=1e-5)
    assert torch.allclose(fused_grad, plain_grad, rtol=1e-2, atol=1e-2)  # bf16 gradients
    assert plain_grad[..., 59:].abs().sum() == 0 and fused_grad[..., 59:].abs().sum() == 0  # padded columns


def test_resolution_on_each_path(monkeypatch):
    auto = FusionConfig()
    # CPU: nothing fused unless asked; megatron's own fusions may be asked anywhere.
    assert resolve_fusions(auto, "torch", thd_rows=True, bf16=False, on_gpu=False) == Fusions()
    assert resolve_fusions(FusionConfig(bias_activation=True), "torch", True, False, on_gpu=False) == \
        Fusions(bias_activation=True)
    # GPU with megatron's own layers and no TE/apex: the jit-fused ops only.
    monkeypatch.setattr(fusions_mod, "apex_grad_accumulation_available", lambda: False)
    monkeypatch.setattr(fusions_mod, "te_fused_rope_available", lambda: False)
    assert resolve_fusions(auto, "torch", True, True, on_gpu=True) == Fusions(bias_activation=True,
                                                                              bias_dropout_add=True)
    with pytest.raises(ConfigError, match=r"model.fusion.rope=true but fused RoPE needs model.impl=transformer_"):
        resolve_fusions(FusionConfig(rope=True), "torch", True, True, on_gpu=True)
    with pytest.raises(ConfigError, match=r"grad_accumulation=true but .*fused_weight_gradient_mlp_cuda"):
        resolve_fusions(FusionConfig(grad_accumulation=True), "torch", True, True, on_gpu=True)
    with pytest.raises(ConfigError, match=r"cross_entropy=true but it hands back bf16 gradients"):
        resolve_fusions(FusionConfig(cross_entropy=True), "torch", True, bf16=False, on_gpu=True)
    # GPU with Transformer Engine: RoPE fused on packed rows only. Without apex no wgrad accumulation
    # even so: the projector and the output layer are megatron's linears, which need apex's kernel.
    monkeypatch.setattr(fusions_mod, "te_fused_rope_available", lambda: True)
    te = resolve_fusions(auto, "transformer_engine", thd_rows=True, bf16=True, on_gpu=True)
    assert te == Fusions(bias_activation=True, bias_dropout_add=True, rope=True)
    with pytest.raises(ConfigError, match=r"grad_accumulation=true but apex's .* even with model.impl=transformer_"):
        resolve_fusions(FusionConfig(grad_accumulation=True), "transformer_engine", True, True, on_gpu=True)
    monkeypatch.setattr(fusions_mod, "apex_grad_accumulation_available", lambda: True)
    assert resolve_fusions(auto, "transformer_engine", True, True, on_gpu=True).grad_accumulation
    assert resolve_fusions(auto, "torch", True, True, on_gpu=True).grad_accumulation
    generation = resolve_fusions(FusionConfig(rope=True), "transformer_engine", thd_rows=False, bf16=True, on_gpu=True)
    assert generation.rope is False
    assert resolve_fusions(FusionConfig(cross_entropy=True), "transformer_engine", True, True, True).cross_entropy


def test_what_megatron_core_gets(monkeypatch):
    """The TransformerConfigs of both towers, with TE's fused RoPE present (a stand-in kernel)."""
    from megatron.core.models.common.embeddings import rope_utils

    from nvlm_train.config.parallel import ParallelConfig
    from nvlm_train.config.store import load_model_config
    from nvlm_train.model.transformer_config import language_transformer_config, vision_transformer_config

    monkeypatch.setattr(rope_utils, "fused_apply_rotary_pos_emb_thd", lambda *a, **k: None)
    model = load_model_config("nvlm_d_tiny")
    every = Fusions(bias_activation=True, bias_dropout_add=True, rope=True, grad_accumulation=True,
                    cross_entropy=True)
    lang = language_transformer_config(model, ParallelConfig(), fusions=every)
    vit = vision_transformer_config(model, ParallelConfig(), fusions=every)
    assert (lang.bias_activation_fusion, lang.bias_dropout_fusion, lang.apply_rope_fusion,
            lang.gradient_accumulation_fusion, lang.cross_entropy_loss_fusion, lang.cross_entropy_fusion_impl) == \
        (True, True, True, True, True, "native")
    assert (vit.bias_activation_fusion, vit.bias_dropout_fusion, vit.apply_rope_fusion,
            vit.gradient_accumulation_fusion, vit.cross_entropy_loss_fusion) == (False, True, False, True, False)
    plain = language_transformer_config(model, ParallelConfig())
    assert not (plain.bias_activation_fusion or plain.bias_dropout_fusion or plain.apply_rope_fusion
                or plain.gradient_accumulation_fusion or plain.cross_entropy_loss_fusion)
