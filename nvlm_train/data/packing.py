"""Rows and batches: pack encoded samples into fixed-length rows and build the batch dict.

Batch contract (docs/architecture.md): ``tokens``, ``labels`` (next token within the same
sample), ``loss_mask`` (1 where the label is an assistant token; 0 on the last position of each
sample and on padding), ``position_ids`` (restart per sample), ``seq_boundaries`` (cumulative
segment starts per row, trailing padding its own segment, rows padded by repeating s),
``num_samples``, ``pixel_values`` (uint8 [tiles, 3, S, S]; the model normalises them on the device)
in image-run order (row-major). The device route carries ``images`` and ``image_plans`` instead
(``nvlm_train.vision.route``), which the device turns into the same ``pixel_values``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from nvlm_train.data.encode import EncodedSample
from nvlm_train.vision.route import TileRoute, batch_tiles, collate_tiles


def row_fits(row: Sequence[EncodedSample], sample: EncodedSample, seq_length: int, packing: bool) -> bool:
    if not row:
        return len(sample) <= seq_length
    return packing and sum(len(s) for s in row) + len(sample) <= seq_length


def collate(
    rows: Sequence[Sequence[EncodedSample]],
    seq_length: int,
    tokens_per_tile: int,
    image_context_id: int,
    pad_id: int,
    image_size: int,
    route: TileRoute = TileRoute.WORKER,
) -> dict[str, torch.Tensor]:
    """Build one micro-batch from rows of samples (each row's total length <= ``seq_length``)."""
    b, s = len(rows), seq_length
    tokens = np.full((b, s), pad_id, dtype=np.int64)
    labels = np.full((b, s), pad_id, dtype=np.int64)
    loss_mask = np.zeros((b, s), dtype=np.float32)
    position_ids = np.zeros((b, s), dtype=np.int64)
    bounds: list[list[int]] = []
    for r, row in enumerate(rows):
        starts = [0]
        pos = 0
        for smp in row:
            n = len(smp)
            tokens[r, pos:pos + n] = smp.tokens
            labels[r, pos:pos + n - 1] = smp.tokens[1:]
            loss_mask[r, pos:pos + n - 1] = smp.targets[1:]
            position_ids[r, pos:pos + n] = np.arange(n)
            pos += n
            starts.append(pos)
        if pos > s:
            raise ValueError(f"row {r} holds {pos} tokens > seq_length {s}")
        if pos < s:
            position_ids[r, pos:] = np.arange(s - pos)
            starts.append(s)
        bounds.append(starts)
    width = max(len(x) for x in bounds)
    seq_boundaries = np.array([x + [s] * (width - len(x)) for x in bounds], dtype=np.int64)
    batch = {
        "tokens": torch.from_numpy(tokens),
        "labels": torch.from_numpy(labels),
        "loss_mask": torch.from_numpy(loss_mask),
        "position_ids": torch.from_numpy(position_ids),
        "seq_boundaries": torch.from_numpy(seq_boundaries),
        "num_samples": torch.tensor([len(row) for row in rows], dtype=torch.int64),
    }
    batch.update(collate_tiles([smp.tiles for row in rows for smp in row], route, image_size))
    n_ctx = int((tokens == image_context_id).sum())
    n_tiles = batch_tiles(batch)
    assert n_ctx == n_tiles * tokens_per_tile, (
        f"batch has {n_ctx} image-context tokens but {n_tiles} tiles x {tokens_per_tile}")
    return batch
