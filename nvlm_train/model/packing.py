"""Attention masks for packed rows: causal inside each sample, nothing across samples."""

from __future__ import annotations

import torch


def segment_ids(seq_boundaries: torch.Tensor, seq_length: int) -> torch.Tensor:
    """[b, n+1] cumulative segment starts (last = s, padded by repeating s) -> [b, s] ids."""
    pos = torch.arange(seq_length, device=seq_boundaries.device)
    inner = seq_boundaries[:, 1:].contiguous()
    return torch.searchsorted(inner, pos.expand(inner.shape[0], -1).contiguous(), right=True)


def packed_causal_mask(seq_boundaries: torch.Tensor | None, batch: int, seq_length: int,
                       device: torch.device | None = None) -> torch.Tensor:
    """Boolean [b, 1, s, s] mask in megatron's convention (True = masked out)."""
    causal = torch.ones(seq_length, seq_length, dtype=torch.bool, device=device).triu(1)
    if seq_boundaries is None:
        return causal.expand(batch, 1, -1, -1)
    seg = segment_ids(seq_boundaries.to(device), seq_length)  # [b, s]
    cross = seg[:, :, None] != seg[:, None, :]  # [b, s, s]
    return (cross | causal).unsqueeze(1)
