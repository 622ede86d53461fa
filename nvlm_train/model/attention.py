"""Core attention through PyTorch's fused kernels, for the ``torch`` layer implementation.

A drop-in for megatron-core's ``DotProductAttention`` (same constructor and forward signature):
it runs on CPU and on GPUs without Transformer Engine. Unpacked rows (and the ViT) use SDPA with
``is_causal`` or no mask, so CUDA picks its flash kernel; GQA goes through ``enable_gqa``, never a
copy of K/V per query head. Packed rows arrive as THD (``PackedSeqParams``, see
``nvlm_train.model.packing``): on CUDA in half precision ``torch.nn.attention.varlen.varlen_attn``
takes the whole pack at once; elsewhere (CPU, fp32, no varlen) every sample gets its own causal
SDPA, samples of similar length batched into one call. Padding tokens get zeros and cost no
attention work in either path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig

from nvlm_train.model.packing import PackedRows

try:  # torch >= 2.10 on CUDA builds; absent elsewhere
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # pragma: no cover - depends on the torch build
    varlen_attn = None

_VARLEN_DTYPES = (torch.float16, torch.bfloat16)


def _segments(p: PackedSeqParams) -> tuple[tuple[int, int], ...]:
    """(start, real length) per sequence; megatron-style params without our tables are read here."""
    if isinstance(p, PackedRows) and p.segments:
        return p.segments
    cu = p.cu_seqlens_q.tolist()
    starts = (p.cu_seqlens_q_padded if p.cu_seqlens_q_padded is not None else p.cu_seqlens_q).tolist()
    return tuple((starts[i], cu[i + 1] - cu[i]) for i in range(len(cu) - 1))


# A sample joins the current group while it is at least this fraction of the group's longest: at
# most 1/0.75^2 = 1.8x the attention work for the shortest, a handful of SDPA calls per pack.
_GROUP_RATIO = 0.75


def length_groups(segments) -> list[list[tuple[int, int]]]:
    """(start, length) segments -> groups of similar length, longest first in each group."""
    groups: list[list[tuple[int, int]]] = []
    for seg in sorted(segments, key=lambda x: -x[1]):
        if groups and seg[1] >= _GROUP_RATIO * groups[-1][0][1]:
            groups[-1].append(seg)
        else:
            groups.append([seg])
    return groups


def _varlen_applies(q: torch.Tensor, p: PackedSeqParams, dropout: float) -> bool:
    """varlen_attn runs flash kernels: CUDA, half precision, no dropout, and our padding tables."""
    return (varlen_attn is not None and isinstance(p, PackedRows) and q.is_cuda and q.dtype in _VARLEN_DTYPES
            and dropout == 0)


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
        self.attn_mask_type = attn_mask_type
        self.softmax_scale = softmax_scale or 1.0 / math.sqrt(config.kv_channels)
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(
        self,
        query: torch.Tensor,  # [sq, b, np, hn]; THD: [t, np, hn]
        key: torch.Tensor,  # [sk, b, ng, hn]; THD: [t, ng, hn]
        value: torch.Tensor,  # [sk, b, ng, hn]; THD: [t, ng, hn]
        attention_mask: torch.Tensor | None,  # [b, 1, sq, sk] bool, True = masked
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params: PackedSeqParams | None = None,
    ) -> torch.Tensor:
        if attention_bias is not None:
            raise ValueError("attention_bias needs model.impl=transformer_engine")
        mask_type = attn_mask_type or self.attn_mask_type
        causal = mask_type in (AttnMaskType.causal, AttnMaskType.padding_causal)
        if packed_seq_params is not None and packed_seq_params.qkv_format == "thd":
            return self._packed(query, key, value, packed_seq_params, causal)  # [t, np * hn]
        if packed_seq_params is not None:
            raise ValueError(f"SDPAttention takes qkv_format='thd' packed rows, not {packed_seq_params.qkv_format!r}")
        sq, b, np_, hn = query.shape
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads, s, hn]
        mask = None if attention_mask is None else ~attention_mask  # SDPA: True = attend
        ctx = self._sdpa(q, k, v, mask, is_causal=causal and mask is None)
        # [b, np, sq, hn] -> [sq, b, np * hn]
        return ctx.permute(2, 0, 1, 3).reshape(sq, b, np_ * hn)

    def _sdpa(self, q, k, v, mask, is_causal: bool) -> torch.Tensor:
        gqa = q.shape[-3] != k.shape[-3]
        dropout = self.dropout_p if self.training else 0.0
        kw = dict(attn_mask=mask, is_causal=is_causal, scale=self.softmax_scale, enable_gqa=gqa)
        if dropout > 0:
            with tensor_parallel.get_cuda_rng_tracker().fork():
                return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, **kw)
        return F.scaled_dot_product_attention(q, k, v, **kw)

    def _packed(self, q, k, v, p: PackedSeqParams, causal: bool) -> torch.Tensor:
        t, np_, hn = q.shape
        dropout = self.dropout_p if self.training else 0.0
        if isinstance(p, PackedRows) and not p.segments:  # nothing but padding (an evaluation pass's end)
            return q.new_zeros(t, np_ * hn)
        if _varlen_applies(q, p, dropout):
            return self._varlen(q, k, v, p, causal).reshape(t, np_ * hn)
        if causal:
            return self._grouped_causal(q, k, v, _segments(p))
        pieces, cursor = [], 0
        for start, length in _segments(p):
            if start > cursor:  # padding: zeros, no attention work
                pieces.append(q.new_zeros(start - cursor, np_ * hn))
            seg = [x[start:start + length].transpose(0, 1) for x in (q, k, v)]  # [heads, L, hn]
            out = self._sdpa(*seg, None, is_causal=causal)  # [np, L, hn]
            pieces.append(out.transpose(0, 1).reshape(length, np_ * hn))
            cursor = start + length
        if cursor < t:
            pieces.append(q.new_zeros(t - cursor, np_ * hn))
        return torch.cat(pieces)

    def _grouped_causal(self, q, k, v, segments) -> torch.Tensor:
        """Causal SDPA per sample, samples of similar length batched into one call.

        Each sample is padded at its END to its group's longest: causal attention never looks
        forward, so the padding changes no real token's result (the padded rows are dropped).
        """
        t, np_, hn = q.shape
        qz, kz, vz = (torch.cat([x, x.new_zeros(1, *x.shape[1:])]) for x in (q, k, v))  # row t: zeros
        index, values = [], []
        for group in length_groups(segments):
            steps = torch.arange(group[0][1], device=q.device)
            starts = torch.tensor([a for a, _ in group], device=q.device)
            lengths = torch.tensor([n for _, n in group], device=q.device)
            valid = steps[None] < lengths[:, None]  # [n, L]
            idx = torch.where(valid, starts[:, None] + steps[None], t)  # [n, L], padding -> the zero row
            out = self._sdpa(*(x[idx].transpose(1, 2) for x in (qz, kz, vz)), None, is_causal=True)  # [n, np, L, hn]
            index.append(idx[valid])
            values.append(out.transpose(1, 2)[valid].reshape(-1, np_ * hn))
        full = q.new_zeros(t, np_ * hn)
        return full.index_copy(0, torch.cat(index), torch.cat(values)) if index else full

    def _varlen(self, q, k, v, p: PackedRows, causal: bool) -> torch.Tensor:
        """The whole pack in one flash call; padding is gathered out first, zeros put back after."""
        index = p.real_index
        if index is not None:
            q, k, v = (x.index_select(0, index) for x in (q, k, v))  # [n_real, heads, hn]
        q, k, v = (x.contiguous() for x in (q, k, v))  # flash wants dense [t, heads, hn]
        longest = p.max_real
        out = varlen_attn(q, k, v, p.cu_seqlens_q, p.cu_seqlens_kv, longest, longest, scale=self.softmax_scale,
                          window_size=(-1, 0) if causal else (-1, -1), enable_gqa=q.shape[1] != k.shape[1])
        if index is None:
            return out
        full = out.new_zeros(p.total_tokens, *out.shape[1:])
        return full.index_copy(0, index, out)
