import numpy as np
import pytest
import torch

from nvlm_train.data.encode import EncodedSample
from nvlm_train.data.packing import collate, row_fits
from nvlm_train.vision.route import ImageTiles, TileRoute

CTX, PAD = 3, 0


def sample(tokens, targets, tiles=0, fill=0.0):
    payload = ImageTiles(TileRoute.WORKER, (tiles,) if tiles else (), pixel_values=torch.full((tiles, 3, 2, 2), fill))
    return EncodedSample(np.array(tokens, dtype=np.int64), np.array(targets, dtype=bool), payload)


def test_packed_row_contract():
    a = sample([10, 11, 12, 13, 14], [0, 0, 0, 1, 1])
    b = sample([20, 21, 22], [0, 1, 1])
    batch = collate([[a, b]], seq_length=10, tokens_per_tile=1, image_context_id=CTX, pad_id=PAD, image_size=2)
    assert batch["tokens"].tolist() == [[10, 11, 12, 13, 14, 20, 21, 22, 0, 0]]
    assert batch["labels"].tolist() == [[11, 12, 13, 14, 0, 21, 22, 0, 0, 0]]
    assert batch["loss_mask"].tolist() == [[0, 0, 1, 1, 0, 1, 1, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 0, 1]]
    assert batch["seq_boundaries"].tolist() == [[0, 5, 8, 10]]
    assert batch["num_samples"].tolist() == [2]
    assert batch["tokens"].dtype == torch.int64 and batch["loss_mask"].dtype == torch.float32
    assert batch["pixel_values"].shape == (0, 3, 2, 2)


def test_rows_are_padded_to_the_same_boundary_width_and_pixels_follow_token_order():
    a = sample([1, CTX, CTX, 5], [0, 0, 0, 1], tiles=2, fill=1.0)
    b = sample([1, CTX, 5], [0, 0, 1], tiles=1, fill=2.0)
    c = sample([1, 6, 7, 8, 9, 6], [0, 0, 0, 1, 1, 1])
    d = sample([1, CTX, 5, 5], [0, 0, 1, 1], tiles=1, fill=3.0)
    batch = collate([[a, b], [c, d]], 10, 1, CTX, PAD, 2)
    assert batch["seq_boundaries"].tolist() == [[0, 4, 7, 10], [0, 6, 10, 10]]
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [1.0, 1.0, 2.0, 3.0]
    assert batch["position_ids"][1].tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3]


def test_image_token_count_mismatch_asserts():
    bad = sample([1, CTX, CTX, 5], [0, 0, 0, 1], tiles=1)
    with pytest.raises(AssertionError, match="image-context tokens"):
        collate([[bad]], 10, 1, CTX, PAD, 2)


def test_row_fits():
    s5 = sample([1] * 5, [1] * 5)
    assert row_fits([], s5, 5, packing=False)
    assert not row_fits([s5], s5, 10, packing=False)
    assert row_fits([s5], s5, 10, packing=True)
    assert not row_fits([s5], s5, 9, packing=True)
