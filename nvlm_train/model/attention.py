"""Core attention through ``torch.nn.functional.scaled_dot_product_attention``.

A drop-in for megatron-core's ``DotProductAttention`` (same constructor and forward
signature) for the ``torch`` layer implementation: it runs on CPU and on GPUs without
Transformer Engine, uses PyTorch's fused kernels where available, and honours an explicit
boolean mask (megatron convention: True = masked out) so packed rows stay block-diagonal.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core import parallel_state, tensor_parallel
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.utils import divide


class SDPAttention(MegatronModule):
    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection=None,
    ):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("context parallelism needs model.impl=transformer_engine")
        tp = (
            pg_collection.tp.size()
            if pg_collection is not None
            else parallel_state.get_tensor_model_parallel_world_size()
        )
        self.attn_mask_type = attn_mask_type
        self.heads_per_partition = divide(config.num_attention_heads, tp)
        self.groups_per_partition = divide(config.num_query_groups, tp)
        self.softmax_scale = softmax_scale or 1.0 / math.sqrt(config.kv_channels)
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(
        self,
        query: torch.Tensor,  # [sq, b, np, hn]
        key: torch.Tensor,  # [sk, b, ng, hn]
        value: torch.Tensor,  # [sk, b, ng, hn]
        attention_mask: torch.Tensor | None,  # [b, 1, sq, sk] bool, True = masked
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError(
                "packed_seq_params/attention_bias need model.impl=transformer_engine; the torch "
                "implementation expresses packing with a block-diagonal attention_mask"
            )
        mask_type = attn_mask_type or self.attn_mask_type
        sq, b, np_, hn = query.shape
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads, s, hn]
        if self.heads_per_partition != self.groups_per_partition:
            rep = self.heads_per_partition // self.groups_per_partition
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        mask = None
        is_causal = False
        if attention_mask is not None:
            mask = ~attention_mask  # SDPA: True = attend
        elif mask_type == AttnMaskType.causal:
            is_causal = True
        dropout = self.dropout_p if self.training else 0.0
        if dropout > 0:
            with tensor_parallel.get_cuda_rng_tracker().fork():
                ctx = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal,
                    scale=self.softmax_scale,
                )
        else:
            ctx = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=is_causal, scale=self.softmax_scale
            )
        # [b, np, sq, hn] -> [sq, b, np * hn]
        return ctx.permute(2, 0, 1, 3).reshape(sq, b, np_ * hn)
