"""Token cross-entropy over the vocab-parallel logits, ignoring megatron's vocabulary padding.

megatron pads the vocabulary to a multiple of 128 x TP, so the amount of padding depends on TP.
Padded columns are masked to -inf before the softmax: the loss then equals that of the
unpadded model (what the HF export computes) at every TP size.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state, tensor_parallel


def mask_padded_vocab(logits: torch.Tensor, real_vocab: int) -> torch.Tensor:
    """logits: [..., V/tp] local shard; columns whose global id >= real_vocab become -inf."""
    local = logits.shape[-1]
    start = parallel_state.get_tensor_model_parallel_rank() * local
    if start + local <= real_vocab:
        return logits
    ids = torch.arange(start, start + local, device=logits.device)
    return logits.masked_fill(ids >= real_vocab, float("-inf"))


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, real_vocab: int) -> torch.Tensor:
    """[b, s, V/tp] logits, [b, s] labels -> [b, s] per-token loss (fp32)."""
    logits = mask_padded_vocab(logits.float(), real_vocab)
    return tensor_parallel.vocab_parallel_cross_entropy(logits.contiguous(), labels)
