"""Map our typed model config onto megatron-core ``TransformerConfig``s (one per tower)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig

from nvlm_train.config.model import ModelConfig
from nvlm_train.config.parallel import ParallelConfig
from nvlm_train.model.fusions import UNFUSED, Fusions


def padded_vision_heads(model: ModelConfig, tp: int) -> int:
    """Heads after zero-padding to a multiple of lcm(TP, pad_heads_to_multiple_of)."""
    multiple = math.lcm(tp, max(1, model.vision.pad_heads_to_multiple_of))
    return math.ceil(model.vision.num_attention_heads / multiple) * multiple


def padded_vocab_size(vocab_size: int, tp: int, multiple: int = 1024) -> int:
    """Vocabulary padded to a multiple of lcm(multiple, TP); conversions strip the padding."""
    step = math.lcm(max(1, multiple), tp)
    return math.ceil(vocab_size / step) * step


@dataclass(frozen=True)
class Precision:
    params_dtype: torch.dtype = torch.float32
    bf16: bool = False

    @classmethod
    def of_run(cls, mode: str) -> Precision:
        """``train.precision``: bf16, fp32, or auto (bf16 where a GPU trains, fp32 on the CPU)."""
        bf16 = mode == "bf16" or (mode == "auto" and torch.cuda.is_available())
        return cls(params_dtype=torch.bfloat16 if bf16 else torch.float32, bf16=bf16)


def _recompute(kind: str | None, num_layers: int) -> dict:
    if kind is None:
        return {}
    if kind == "selective":
        return {"recompute_granularity": "selective"}
    return {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": num_layers}


def _common(parallel: ParallelConfig, precision: Precision, init_std: float, use_cpu_init: bool) -> dict:
    return dict(
        tensor_model_parallel_size=parallel.tp,
        sequence_parallel=parallel.sequence_parallel,
        params_dtype=precision.params_dtype,
        bf16=precision.bf16,
        pipeline_dtype=precision.params_dtype,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=init_std,
        use_cpu_initialization=use_cpu_init,
        # Loss is summed per token and normalised by the global assistant-token count.
        calculate_per_token_loss=True,
        # Attention is SDPA or TE's own kernels and the norms are torch's or TE's: megatron's fused
        # softmax and persistent layer norm are not on either path. The other fusions: ``fusions``.
        masked_softmax_fusion=False,
        persist_layer_norm=False,
    )


def vision_transformer_config(
    model: ModelConfig, parallel: ParallelConfig, precision: Precision = Precision(), use_cpu_init: bool = True,
    fusions: Fusions = UNFUSED,
) -> TransformerConfig:
    """InternViT block: never pipeline-split (the ViT lives on the first stage)."""
    v = model.vision
    heads = padded_vision_heads(model, parallel.tp)
    return TransformerConfig(
        num_layers=v.num_layers,
        hidden_size=v.hidden_size,
        num_attention_heads=heads,
        num_query_groups=heads,
        kv_channels=v.head_dim,
        ffn_hidden_size=v.ffn_hidden_size,
        normalization="RMSNorm",
        layernorm_epsilon=v.norm_eps,
        add_bias_linear=True,
        add_qkv_bias=False,
        gated_linear_unit=False,
        activation_func=F.gelu,
        qk_layernorm=True,
        pipeline_model_parallel_size=1,
        **_recompute(model.recompute.vision, model.recompute.num_layers),
        **_common(parallel, precision, model.init_std, use_cpu_init),
        **fusions.transformer_config_kwargs("vision"),
    )


def language_transformer_config(
    model: ModelConfig, parallel: ParallelConfig, precision: Precision = Precision(), use_cpu_init: bool = True,
    fusions: Fusions = UNFUSED,
) -> TransformerConfig:
    """Qwen2 decoder."""
    lm = model.language
    vpp = parallel.vpp if (parallel.vpp or 1) > 1 else None
    return TransformerConfig(
        num_layers=lm.num_layers,
        hidden_size=lm.hidden_size,
        num_attention_heads=lm.num_attention_heads,
        num_query_groups=lm.num_query_groups,
        kv_channels=lm.head_dim,
        ffn_hidden_size=lm.ffn_hidden_size,
        normalization="RMSNorm",
        layernorm_epsilon=lm.norm_eps,
        add_bias_linear=False,
        add_qkv_bias=True,
        gated_linear_unit=True,
        activation_func=F.silu,
        pipeline_model_parallel_size=parallel.pp,
        virtual_pipeline_model_parallel_size=vpp,
        num_layers_in_first_pipeline_stage=parallel.first_stage_split(lm.num_layers),
        **_recompute(model.recompute.language, model.recompute.num_layers),
        **_common(parallel, precision, model.init_std, use_cpu_init),
        **fusions.transformer_config_kwargs("language"),
    )
