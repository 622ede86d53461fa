"""Left-padded generation batches: token slots, per-slot positions and attention masks.

Every prompt of a batch ends at the same slot, so each step's new token sits in one column for all
rows and megatron's static KV cache (one write offset for the batch) fits. A row with ``pad`` leading
pad slots gives its real tokens positions 0, 1, ... exactly as it would alone; its pad slots are
masked out of every real token's attention and see only themselves (so no row is fully masked).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SlotLayout:
    """Slots of one batch: ``tokens[:, :prompt_len]`` are the left-padded prompts."""

    tokens: torch.Tensor  # int64 [b, total]; generated tokens are written in as they come
    pads: torch.Tensor  # int64 [b] leading pad slots per row
    positions: torch.Tensor  # int64 [b, total] RoPE position of every slot
    image_mask: torch.Tensor  # bool [b, prompt_len] image-context slots of the prompts
    prompt_len: int

    @property
    def total(self) -> int:
        return self.tokens.shape[1]


def left_padded(prompts: list[list[int]], max_new_tokens: int, pad_id: int, image_token_id: int) -> SlotLayout:
    """Slots for ``prompts`` plus ``max_new_tokens`` generated tokens."""
    longest = max(len(p) for p in prompts)
    total = longest + max_new_tokens
    tokens = torch.full((len(prompts), total), pad_id, dtype=torch.long)
    pads = torch.tensor([longest - len(p) for p in prompts], dtype=torch.long)
    for row, p in enumerate(prompts):
        tokens[row, longest - len(p):longest] = torch.tensor(p, dtype=torch.long)
    positions = (torch.arange(total)[None] - pads[:, None]).clamp(min=0)  # [b, total]
    slots = torch.arange(longest)[None]
    image_mask = (tokens[:, :longest] == image_token_id) & (slots >= pads[:, None])
    return SlotLayout(tokens, pads, positions, image_mask, longest)


def attention_mask(pads: torch.Tensor, q_start: int, q_end: int) -> torch.Tensor:
    """[b, 1, q_end - q_start, q_end] bool, True = masked: causal, pad keys hidden from real queries."""
    q = torch.arange(q_start, q_end)[:, None]  # [sq, 1]
    k = torch.arange(q_end)[None]  # [1, sk]
    allowed = (k <= q)[None] & (k[None] >= pads[:, None, None])  # [b, sq, sk]
    allowed = allowed | (k == q)[None]  # a pad query sees itself
    return ~allowed[:, None]
