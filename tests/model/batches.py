"""Synthetic micro-batches following the batch contract (docs/architecture.md, Contracts), built by hand.

A row is a list of samples; a sample is a list of segments: ("text", n) for n text tokens,
("image", tiles) for an image run of tiles x tokens_per_tile image-context tokens.
"""

from __future__ import annotations

import torch


def build_batch(rows, seq_length: int, tokens_per_tile: int, image_token_id: int, vocab: int,
                image_size: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    b = len(rows)
    tokens = torch.zeros(b, seq_length, dtype=torch.long)
    labels = torch.zeros(b, seq_length, dtype=torch.long)
    loss_mask = torch.zeros(b, seq_length)
    position_ids = torch.zeros(b, seq_length, dtype=torch.long)
    bounds, tiles = [], 0
    for r, samples in enumerate(rows):
        cursor, starts = 0, [0]
        for sample in samples:
            start = cursor
            for kind, n in sample:
                if kind == "image":
                    length = n * tokens_per_tile
                    tokens[r, cursor:cursor + length] = image_token_id
                    tiles += n
                else:
                    length = n
                    ids = torch.randint(image_token_id + 1, vocab, (n,), generator=gen)
                    tokens[r, cursor:cursor + length] = ids
                cursor += length
            end = cursor
            position_ids[r, start:end] = torch.arange(end - start)
            labels[r, start:end - 1] = tokens[r, start + 1:end]
            # Loss on text tokens that predict text (stand-in for assistant tokens).
            predicts_text = tokens[r, start + 1:end] != image_token_id
            loss_mask[r, start:end - 1] = predicts_text.float() * (torch.rand(end - start - 1, generator=gen) < 0.7)
            starts.append(end)
        if cursor < seq_length:
            position_ids[r, cursor:] = torch.arange(seq_length - cursor)
            starts.append(seq_length)
        bounds.append(starts)
    width = max(len(s) for s in bounds)
    seq_boundaries = torch.tensor([s + [seq_length] * (width - len(s)) for s in bounds], dtype=torch.long)
    pixel_values = torch.randn(tiles, 3, image_size, image_size, generator=gen)
    return {"tokens": tokens, "labels": labels, "loss_mask": loss_mask, "position_ids": position_ids,
            "seq_boundaries": seq_boundaries, "num_samples": torch.tensor([len(r) for r in rows]),
            "pixel_values": pixel_values}


# Two micro-batches of 2 rows x 96 tokens (tiny model: 16 image tokens per tile). Several images
# with different tile counts, a packed row (image sample + text sample + padding) and a
# text-only row.
PARITY_ROWS = [
    [
        [[("text", 5), ("image", 3), ("text", 20)]],
        [[("text", 3), ("image", 1), ("text", 12)], [("text", 30)]],
    ],
    [
        [[("text", 4), ("image", 2), ("text", 6), ("image", 1), ("text", 20)]],
        [[("text", 90)]],
    ],
]
