"""An all-padding row (the last micro-batch of an evaluation pass) packs as an empty sequence."""

import torch

from nvlm_train.model.packing import packed_rows, sample_lengths


def test_all_padding_row_is_an_empty_sequence():
    bounds = torch.tensor([[0, 3, 5, 8], [0, 8, 8, 8]])
    assert sample_lengths(bounds, torch.tensor([2, 0])) == [[3, 2], []]
    p = packed_rows(bounds, torch.tensor([2, 0]), batch=2, seq_length=8)
    assert p.cu_seqlens_q.tolist() == [0, 3, 5, 5]
    assert p.cu_seqlens_q_padded.tolist() == [0, 3, 8, 16]  # padded extents cover every token
    assert p.segments == ((0, 3), (3, 2))
    assert p.real_index.tolist() == [0, 1, 2, 3, 4]
    assert p.max_real == 3
