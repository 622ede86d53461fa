"""Greedy generation with the megatron NVLM-D model (one process, TP1/PP1).

No KV cache: each new token re-runs the whole (short) sequence, which is fine for evaluation of
small models and keeps this path identical to training's forward. The image embeddings are
recomputed each step for the same reason.
"""

from __future__ import annotations

import torch

from nvlm_train.model.loss import mask_padded_vocab
from nvlm_train.model.nvlm_d import NVLMDModel


@torch.no_grad()
def greedy_generate(model: NVLMDModel, prompt: list[int], pixel_values: torch.Tensor, max_new_tokens: int,
                    stop_ids: set[int], real_vocab: int) -> list[int]:
    """Generated token ids (stop token excluded)."""
    device = next(model.parameters()).device
    tokens = list(prompt)
    out: list[int] = []
    pv = pixel_values.to(device)
    for _ in range(max_new_tokens):
        ids = torch.tensor([tokens], device=device)
        pos = torch.arange(len(tokens), device=device)[None]
        logits = model(ids, pos, pixel_values=pv)  # [1, s, V_padded]
        nxt = int(mask_padded_vocab(logits[0, -1].float(), real_vocab).argmax())
        if nxt in stop_ids:
            break
        out.append(nxt)
        tokens.append(nxt)
    return out
