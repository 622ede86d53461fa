"""Layer specs for the two layer implementations, ``torch`` and ``transformer_engine``.

Both build the same module tree with the same parameter names (norms are separate modules,
never fused into the following linear), so a checkpoint moves between implementations.
``torch`` uses megatron-core's own parallel linears and ``SDPAttention``; it runs on CPU and on
GPUs without Transformer Engine. ``transformer_engine`` swaps in TE's linears and attention.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch
from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.models.backends import LocalSpecProvider
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

from nvlm_train.model.attention import SDPAttention
from nvlm_train.model.internvit_layers import (
    FullWidthQKRMSNorm,
    LayerScaledMLP,
    LayerScaledSelfAttention,
    NoBiasColumnParallelLinear,
)


def transformer_engine_available() -> bool:
    return importlib.util.find_spec("transformer_engine") is not None


def resolve_impl(impl: str) -> str:
    """'auto' -> transformer_engine on a CUDA machine that has it, else torch."""
    if impl == "auto":
        return "transformer_engine" if torch.cuda.is_available() and transformer_engine_available() else "torch"
    if impl == "transformer_engine" and not transformer_engine_available():
        raise RuntimeError(
            "model.impl=transformer_engine but transformer_engine is not installed; use "
            "model.impl=torch (or auto), or run in the NGC container (see Dockerfile)"
        )
    return impl


@dataclass(frozen=True)
class _Modules:
    column: type
    column_no_bias: type
    row: type
    attention: type
    norm: type


def _modules(impl: str) -> _Modules:
    norm = LocalSpecProvider().layer_norm(rms_norm=True)
    if impl == "torch":
        return _Modules(ColumnParallelLinear, NoBiasColumnParallelLinear, RowParallelLinear, SDPAttention, norm)
    from megatron.core.extensions.transformer_engine import (
        TEColumnParallelLinear,
        TEDotProductAttention,
        TENorm,
        TERowParallelLinear,
    )

    class TENoBiasColumnParallelLinear(TEColumnParallelLinear):
        def __init__(self, *args, bias: bool = False, **kwargs):
            super().__init__(*args, bias=False, **kwargs)

    return _Modules(TEColumnParallelLinear, TENoBiasColumnParallelLinear, TERowParallelLinear,
                    TEDotProductAttention, TENorm)


def internvit_layer_spec(impl: str, num_real_heads: int, layerscale_init: float) -> ModuleSpec:
    """Pre-RMSNorm ViT layer with full-width q/k RMSNorm, bias-free qkv and LayerScale."""
    m = _modules(impl)
    qk_norm = ModuleSpec(module=FullWidthQKRMSNorm, params={"num_real_heads": num_real_heads})
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=m.norm,
            self_attention=ModuleSpec(
                module=LayerScaledSelfAttention,
                params={"attn_mask_type": AttnMaskType.no_mask, "layerscale_init": layerscale_init},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=m.column_no_bias,
                    core_attention=m.attention,
                    linear_proj=m.row,
                    q_layernorm=qk_norm,
                    k_layernorm=qk_norm,
                ),
            ),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=m.norm,
            mlp=ModuleSpec(
                module=LayerScaledMLP,
                params={"layerscale_init": layerscale_init},
                submodules=MLPSubmodules(linear_fc1=m.column, linear_fc2=m.row),
            ),
            mlp_bda=get_bias_dropout_add,
        ),
    )


def qwen2_layer_spec(impl: str) -> ModuleSpec:
    """Qwen2 decoder layer: pre-RMSNorm, GQA with q/k/v bias, SwiGLU MLP (bias-free)."""
    m = _modules(impl)
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=m.norm,
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={"attn_mask_type": AttnMaskType.causal},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=m.column,
                    core_attention=m.attention,
                    linear_proj=m.row,
                    q_layernorm=IdentityOp,
                    k_layernorm=IdentityOp,
                ),
            ),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=m.norm,
            mlp=ModuleSpec(module=MLP, submodules=MLPSubmodules(linear_fc1=m.column, linear_fc2=m.row)),
            mlp_bda=get_bias_dropout_add,
        ),
    )
