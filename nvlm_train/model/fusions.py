"""Which of megatron-core's fused kernels this model uses: ``model.fusion`` resolved for its path.

Each switch is null (on where the path has the kernel, on GPUs), true (required: an error says
what is missing) or false. Where each kernel exists:

* ``bias_activation`` / ``bias_dropout_add``: megatron-core's own jit-fused ops, on any path. The
  bias-activation one fuses the LLM's SwiGLU only: megatron's fused bias-GELU is the tanh
  approximation, and InternViT's GELU is the exact (erf) one, so the ViT keeps its own;
* ``rope``: Transformer Engine's fused RoPE, and only for packed (THD) rows. Per-token position
  ids (generation, one-sample rows) give every row its own frequencies, which the fused BSHD
  kernel cannot take, so those forwards stay unfused (``NVLMDModel``);
* ``grad_accumulation``: weight gradients written into ``main_grad`` by the GEMM itself. It needs
  apex's ``fused_weight_gradient_mlp_cuda`` on every path: the projector and the output layer are
  megatron's own linears even where the towers are Transformer Engine's;
* ``cross_entropy``: megatron's fused vocab-parallel cross entropy, which hands back bf16
  logit gradients: bf16 runs only. Off unless asked (megatron's default; bench/gpu_perf.sh
  measures it).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch
from megatron.core.models.common.embeddings import rope_utils

from nvlm_train.config.errors import ConfigError
from nvlm_train.config.model import FusionConfig


@dataclass(frozen=True)
class Fusions:
    bias_activation: bool = False
    bias_dropout_add: bool = False
    rope: bool = False
    grad_accumulation: bool = False
    cross_entropy: bool = False

    def transformer_config_kwargs(self, tower: str) -> dict:
        """The megatron-core ``TransformerConfig`` fields of ``tower`` ("vision" or "language")."""
        language = tower == "language"
        return dict(
            bias_activation_fusion=self.bias_activation and language,  # ViT: exact GELU (module docstring)
            bias_dropout_fusion=self.bias_dropout_add,
            apply_rope_fusion=self.rope and language,  # the ViT has no RoPE
            gradient_accumulation_fusion=self.grad_accumulation,
            cross_entropy_loss_fusion=self.cross_entropy and language,
            cross_entropy_fusion_impl="native",
        )


UNFUSED = Fusions()


def te_fused_rope_available() -> bool:
    return rope_utils.fused_apply_rotary_pos_emb_thd is not None


def apex_grad_accumulation_available() -> bool:
    return importlib.util.find_spec("fused_weight_gradient_mlp_cuda") is not None


def _pick(name: str, asked: bool | None, why_not: str | None, auto: bool) -> bool:
    if asked is None:
        return auto and why_not is None
    if asked and why_not is not None:
        raise ConfigError(f"model.fusion.{name}=true but {why_not}; set model.fusion.{name}=null (on where "
                          f"available) or false")
    return bool(asked)


def resolve_fusions(cfg: FusionConfig, impl: str, thd_rows: bool, bf16: bool,
                    on_gpu: bool | None = None) -> Fusions:
    """``cfg`` for a model built with ``impl`` whose LLM runs packed rows as THD (``thd_rows``)."""
    on_gpu = torch.cuda.is_available() if on_gpu is None else on_gpu
    te = impl == "transformer_engine"
    if thd_rows:
        rope = _pick("rope", cfg.rope, None if te and te_fused_rope_available() else
                     "fused RoPE needs model.impl=transformer_engine with a Transformer Engine that has it", on_gpu)
    else:  # a build without packed rows (generation): positions per token, nothing to fuse
        rope = False
    # The projector and the output layer are megatron's own linears on every path (TE's too), and
    # they refuse the flag without apex's kernel.
    accumulation_missing = None if apex_grad_accumulation_available() else (
        "apex's fused_weight_gradient_mlp_cuda is not installed (the projector and the output layer are "
        "megatron-core's own linears even with model.impl=transformer_engine, and they need it)")
    return Fusions(
        bias_activation=_pick("bias_activation", cfg.bias_activation, None, on_gpu),
        bias_dropout_add=_pick("bias_dropout_add", cfg.bias_dropout_add, None, on_gpu),
        rope=rope,
        grad_accumulation=_pick("grad_accumulation", cfg.grad_accumulation, accumulation_missing, on_gpu),
        cross_entropy=_pick("cross_entropy", cfg.cross_entropy,
                            None if bf16 else "it hands back bf16 gradients and this run is fp32", False),
    )
