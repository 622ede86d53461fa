"""Layer specs for the two layer implementations, ``torch`` and ``transformer_engine``.

Both build the same module tree with the same parameter names (norms are separate modules,
never fused into the following linear), so a checkpoint moves between implementations.
``torch`` uses megatron-core's own parallel linears and ``SDPAttention``; it runs on CPU and on
GPUs without Transformer Engine. ``transformer_engine`` swaps in TE's linears and attention.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
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

from nvlm_train.config.choices import Impl
from nvlm_train.config.errors import ConfigError
from nvlm_train.model.attention import SDPAttention
from nvlm_train.model.internvit_layers import (
    FullWidthQKRMSNorm,
    LayerScaledMLP,
    LayerScaledSelfAttention,
    NoBiasColumnParallelLinear,
)

# megatron-core hands ``cu_seqlens_*_padded`` to Transformer Engine only from 1.10 on (older TE
# silently drops them, which misaligns rows with trailing padding); 1.7 added padding-causal THD.
TE_THD_MIN_VERSION = (1, 10)


def transformer_engine_available() -> bool:
    return importlib.util.find_spec("transformer_engine") is not None


def transformer_engine_version() -> tuple[int, ...] | None:
    for dist in ("transformer_engine", "transformer-engine", "transformer_engine_torch"):
        try:
            text = importlib.metadata.version(dist)
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    else:
        return None
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def te_thd_unsupported(bf16: bool) -> str | None:
    """Why the installed Transformer Engine cannot run packed (THD) rows for this run; None if it can."""
    version = transformer_engine_version()
    if version is not None and version[:2] < TE_THD_MIN_VERSION:
        found = ".".join(map(str, version))
        return (f"Transformer Engine {found} < 1.10: megatron-core drops cu_seqlens_*_padded for it, so packed "
                f"rows with trailing padding would be misaligned")
    if not bf16:
        return ("Transformer Engine's THD attention runs in its flash/cuDNN backends, which take bf16/fp16 only, "
                "and this run is fp32")
    return None


@dataclass(frozen=True)
class ImplChoice:
    impl: str  # "torch" | "transformer_engine"
    llm_thd: bool  # the LLM's attention takes packed rows as THD (always on torch)
    note: str | None = None  # why auto chose what it chose, for the log


def resolve_impl(impl: str, packed: bool = True, bf16: bool = True) -> ImplChoice:
    """'auto' -> transformer_engine on a CUDA machine whose TE can run this run's rows, else torch.

    ``packed``: rows hold several samples (data.packing). Samples packed into one row must never
    see each other, so a TE that cannot do THD is refused with packing (explicit impl) or skipped
    (auto, with a note saying why).
    """
    if impl not in list(Impl):
        raise ConfigError(f"model.impl={impl!r}: expected auto, torch or transformer_engine")
    if impl == "torch":
        return ImplChoice("torch", llm_thd=True)
    have_te = transformer_engine_available()
    if impl == "auto" and not (torch.cuda.is_available() and have_te):
        return ImplChoice("torch", llm_thd=True)
    if not have_te:
        raise ConfigError(
            "model.impl=transformer_engine but transformer_engine is not installed; use "
            "model.impl=torch (or auto), or run in the NGC container (see Dockerfile)"
        )
    reason = te_thd_unsupported(bf16)
    if reason is None:
        return ImplChoice("transformer_engine", llm_thd=True)
    if not packed:  # one sample per row: causal attention with trailing padding is exact
        return ImplChoice("transformer_engine", llm_thd=False)
    if impl == "auto":
        return ImplChoice("torch", llm_thd=True,
                          note=f"model.impl=auto: using the torch layers, not Transformer Engine, because {reason}")
    raise ConfigError(
        f"model.impl=transformer_engine cannot run packed rows (data.packing=true) here: {reason}. Use "
        f"model.impl=torch or auto, or set data.packing=false"
    )


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


def qwen2_layer_spec(impl: str, thd: bool = False) -> ModuleSpec:
    """Qwen2 decoder layer: pre-RMSNorm, GQA with q/k/v bias, SwiGLU MLP (bias-free).

    ``thd``: Transformer Engine gets every micro-batch as THD packed rows, with the padding-causal
    mask type megatron-core's LLaVA path uses (TE ignores masks under plain ``causal``).
    """
    m = _modules(impl)
    mask = AttnMaskType.padding_causal if thd and impl == "transformer_engine" else AttnMaskType.causal
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=m.norm,
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={"attn_mask_type": mask},
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
