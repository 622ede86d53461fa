"""Token cross-entropy over the vocab-parallel logits, ignoring megatron's vocabulary padding.

megatron pads the vocabulary to a multiple of 128 x TP, so the amount of padding depends on TP.
Padded columns are set to -inf before the softmax: the loss then equals that of the unpadded
model (what the HF export computes) at every TP size. The logits go to megatron's vocab-parallel
cross entropy in their own dtype (it makes the one fp32 copy the softmax needs), or to its fused
version (``model.fusion.cross_entropy``).
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state, tensor_parallel
from megatron.core.fusions.fused_cross_entropy import fused_vocab_parallel_cross_entropy


def padded_columns(local: int, real_vocab: int) -> int:
    """How many trailing columns of this rank's [..., local] logit shard are vocabulary padding."""
    start = parallel_state.get_tensor_model_parallel_rank() * local
    return min(local, max(0, start + local - real_vocab))


def mask_padded_vocab(logits: torch.Tensor, real_vocab: int) -> torch.Tensor:
    """logits: [..., V/tp] local shard -> a copy whose columns with global id >= real_vocab are -inf."""
    pad = padded_columns(logits.shape[-1], real_vocab)
    if not pad:
        return logits
    ids = torch.arange(logits.shape[-1], device=logits.device)
    return logits.masked_fill(ids >= logits.shape[-1] - pad, float("-inf"))


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, real_vocab: int,
                        fused: bool = False) -> torch.Tensor:
    """[s, b, V/tp] logits, [s, b] labels -> [s, b] per-token loss (fp32).

    The padded columns are filled with -inf in place (a view of this rank's last columns; the
    output layer does not keep its output for the backward), so the logits are not copied here.
    """
    pad = padded_columns(logits.shape[-1], real_vocab)
    if pad:
        logits[..., logits.shape[-1] - pad:].fill_(float("-inf"))
    if fused:
        return fused_vocab_parallel_cross_entropy(logits, labels, parallel_state.get_tensor_model_parallel_group())
    return tensor_parallel.vocab_parallel_cross_entropy(logits, labels)
