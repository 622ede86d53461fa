"""Packed rows equal the same samples run alone; pixel shuffle v2; image-token count errors."""

from __future__ import annotations

import pytest
import torch

from nvlm_train.model.nvlm_d import ImageTokenMismatchError, splice_image_embeddings
from nvlm_train.model.packing import check_positions, packed_rows, segment_ids
from nvlm_train.model.projector import pixel_shuffle_v2
from tests.dist import run_ranks
from tests.model.batches import build_batch

SAMPLE_A = [("text", 3), ("image", 2), ("text", 14)]
SAMPLE_B = [("text", 25)]
SAMPLE_C = [("text", 2), ("image", 1), ("text", 9)]


def packing_worker(rank, world):
    from nvlm_train.config.parallel import ParallelConfig
    from nvlm_train.config.store import load_model_config
    from nvlm_train.model.builder import build_model
    from nvlm_train.runtime.initialize import initialize_distributed

    cfg = load_model_config("nvlm_d_tiny")
    initialize_distributed(ParallelConfig(), seed=5)
    model = build_model(cfg, ParallelConfig()).chunks[0].eval()
    kw = dict(tokens_per_tile=cfg.tokens_per_tile, image_token_id=cfg.language.image_token_id,
              vocab=cfg.language.vocab_size, image_size=cfg.vision.image_size, seed=7)
    packed = build_batch([[SAMPLE_A, SAMPLE_B, SAMPLE_C]], 128, **kw)

    def run(batch):
        with torch.no_grad():
            return model(batch["tokens"], batch["position_ids"], labels=batch["labels"],
                         pixel_values=batch["pixel_values"], seq_boundaries=batch["seq_boundaries"])

    loss = run(packed)[0]
    bounds = packed["seq_boundaries"][0].tolist()
    results = []
    tile_offset = 0
    for i, tiles in enumerate([2, 0, 1]):
        start, end = bounds[i], bounds[i + 1]
        single = {k: v[:, start:end].clone() for k, v in packed.items()
                  if k not in ("pixel_values", "seq_boundaries", "num_samples")}
        single["seq_boundaries"] = torch.tensor([[0, end - start]])
        single["pixel_values"] = packed["pixel_values"][tile_offset:tile_offset + tiles]
        tile_offset += tiles
        alone = run(single)[0]
        mask = packed["loss_mask"][0, start:end]
        results.append(((loss[start:end] * mask).sum().item(), (alone * mask).sum().item(), mask.sum().item()))
    return results


@pytest.mark.multirank
def test_packed_row_equals_samples_alone():
    results = run_ranks(packing_worker, 1)[0]
    for packed_sum, alone_sum, tokens in results:
        assert tokens > 0
        assert abs(packed_sum - alone_sum) <= 1e-5 * abs(alone_sum), (packed_sum, alone_sum)


def test_packed_rows_thd_parameters_by_hand():
    # One row of 6: samples of 3 and 2 tokens, then 1 padding token (its own segment).
    bounds = torch.tensor([[0, 3, 5, 6, 6]])
    assert segment_ids(bounds, 6).tolist() == [[0, 0, 0, 1, 1, 2]]
    p = packed_rows(bounds, torch.tensor([2]), 1, 6)
    assert p.qkv_format == "thd"
    assert p.cu_seqlens_q.tolist() == [0, 3, 5] and p.cu_seqlens_q.dtype == torch.int32
    assert p.cu_seqlens_q_padded.tolist() == [0, 3, 6]  # the padding rides on the row's last sample
    assert p.cu_seqlens_kv is p.cu_seqlens_q and p.cu_seqlens_kv_padded is p.cu_seqlens_q_padded
    assert (p.max_seqlen_q, p.max_seqlen_kv, p.max_real) == (3, 3, 3)
    assert p.segments == ((0, 3), (3, 2)) and p.total_tokens == 6
    assert p.real_index.tolist() == [0, 1, 2, 3, 4]
    # Two rows of 10 (the micro-batch is one pack of 20): [4, 3, pad 3] and [6, 4].
    p = packed_rows(torch.tensor([[0, 4, 7, 10], [0, 6, 10, 10]]), torch.tensor([2, 2]), 2, 10)
    assert p.cu_seqlens_q.tolist() == [0, 4, 7, 13, 17]
    assert p.cu_seqlens_q_padded.tolist() == [0, 4, 10, 16, 20]
    assert (p.max_seqlen_q, p.max_real) == (6, 6)
    assert p.segments == ((0, 4), (4, 3), (10, 6), (16, 4))
    assert p.real_index.tolist() == list(range(7)) + list(range(10, 20))
    # No padding, no index; no boundaries: one sequence per row.
    p = packed_rows(None, None, 2, 5)
    assert p.cu_seqlens_q.tolist() == p.cu_seqlens_q_padded.tolist() == [0, 5, 10] and p.real_index is None
    # Without num_samples the padding segment counts as a sample (attends only to itself).
    assert packed_rows(bounds, None, 1, 6).cu_seqlens_q.tolist() == [0, 3, 5, 6]
    with pytest.raises(ValueError, match="num_samples=4"):
        packed_rows(bounds, torch.tensor([4]), 1, 6)


def test_positions_must_restart_per_sample():
    bounds = torch.tensor([[0, 3, 5, 6, 6]])
    check_positions(torch.tensor([[0, 1, 2, 0, 1, 0]]), bounds)
    with pytest.raises(ValueError, match="row 0 position 3 has 3, expected 0"):
        check_positions(torch.arange(6).unsqueeze(0), bounds)


def _pixel_shuffle_reference(x: torch.Tensor, r: float) -> torch.Tensor:
    """Element-by-element: where InternVL's v2 shuffle sends input [n, i, j, c]."""
    n, h, w, c = x.shape
    k = int(round(1 / r))
    out = torch.empty(n, h // k, w // k, c * k * k)
    for i in range(h):
        for j in range(w):
            # v2 folds column pairs first (inner channel block), then row pairs (outer block).
            block = (i % k) * k + (j % k)
            out[:, i // k, j // k, block * c:(block + 1) * c] = x[:, i, j, :]
    return out


def test_pixel_shuffle_v2_matches_reference():
    x = torch.randn(2, 8, 8, 6)
    got = pixel_shuffle_v2(x, 0.5)
    assert got.shape == (2, 4, 4, 24)
    assert torch.equal(got, _pixel_shuffle_reference(x, 0.5))
    rect = torch.randn(1, 4, 6, 3)  # non-square grids keep rows as rows
    assert torch.equal(pixel_shuffle_v2(rect, 0.5), _pixel_shuffle_reference(rect, 0.5))
    # Spatial locality: tokens come from their own 2x2 neighbourhood only.
    assert torch.equal(got[0, 1, 2].sort().values, x[0, 2:4, 4:6].reshape(-1).sort().values)


def test_image_token_count_mismatch_names_both_counts():
    tokens = torch.tensor([[5, 3, 3, 3, 7]])
    text = torch.zeros(5, 1, 4)
    with pytest.raises(ImageTokenMismatchError, match=r"3 image-context tokens .* produce 2 embeddings"):
        splice_image_embeddings(text, tokens, torch.ones(2, 4), image_token_id=3)
    out = splice_image_embeddings(text, tokens, torch.arange(12.0).reshape(3, 4), image_token_id=3)
    assert out[1:4, 0].tolist() == torch.arange(12.0).reshape(3, 4).tolist()
    assert out[0].abs().sum() == 0 and out[4].abs().sum() == 0
