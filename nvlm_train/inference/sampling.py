"""Next-token choice: greedy, or seeded temperature / top-k / top-p sampling with one RNG per request.

Each request draws from its own generator (seeded from the run's seed and the request id), so a
request's sample does not depend on which other requests share its batch or on the TP/PP layout.
"""

from __future__ import annotations

import zlib

import torch


def request_generator(seed: int, request_id: str) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(request_id.encode())) % 2**63)


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """[b, V] -> the same with tokens outside top-k / the top-p nucleus set to -inf."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # [b, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token once the mass before it already reaches top_p (the top token always stays)
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def choose_tokens(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                  generators: list[torch.Generator]) -> torch.Tensor:
    """[b, V] float logits (real vocabulary only) -> [b] int64 next tokens."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    scaled = filter_logits(logits.float().cpu() / temperature, top_k, top_p)
    probs = scaled.softmax(dim=-1)
    picks = [torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(generators)]
    return torch.cat(picks).to(logits.device)
