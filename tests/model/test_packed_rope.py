"""RoPE on packed rows: megatron-core's THD rotary (restart at every cu_seqlens offset) equals the
batches' per-sample ``position_ids`` on every real token, through either of megatron's THD branches."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

from nvlm_train.model.language import PositionIdRotaryEmbedding
from nvlm_train.model.packing import packed_rows
from nvlm_train.runtime.cpu_runtime import cpu_runtime

CONFIG = SimpleNamespace(apply_rope_fusion=False, rotary_interleaved=False, multi_latent_attention=False,
                         mrope_section=None)


class OneRank:
    def size(self):
        return 1

    def rank(self):
        return 0


def test_thd_rope_matches_per_sample_position_ids():
    s, b, heads, dim = 10, 2, 2, 16
    bounds, counts = torch.tensor([[0, 4, 7, 10], [0, 6, 10, 10]]), torch.tensor([2, 2])  # [4, 3, pad 3], [6, 4]
    position_ids = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1, 2], [0, 1, 2, 3, 4, 5, 0, 1, 2, 3]])
    real = torch.tensor([[1] * 7 + [0] * 3, [1] * 10], dtype=torch.bool)  # [b, s]
    x = torch.randn(s, b, heads, dim, generator=torch.Generator().manual_seed(0))
    group = OneRank()
    with cpu_runtime():
        rope = PositionIdRotaryEmbedding(RotaryEmbedding(kv_channels=dim, rotary_percent=1.0, rotary_base=10000.0,
                                                         cp_group=group), max_positions=64)
        per_token = rope.at_positions(position_ids)  # [s, b, 1, d]
        reference = apply_rotary_pos_emb(x, per_token, CONFIG, cp_group=group)  # [s, b, h, d]
        unrestarted = apply_rotary_pos_emb(x, rope(s), CONFIG, cp_group=group)  # positions 0..s-1 per row

        p = packed_rows(bounds, counts, b, s)
        pack = x.transpose(0, 1).reshape(b * s, heads, dim)  # [t, h, d]
        # What GPTModel does under THD: frequencies for max_seqlen, restarted at every padded offset.
        freqs = rope(max(p.max_seqlen_q, p.max_seqlen_kv), packed_seq=True)  # [max, 1, 1, d]
        assert freqs.shape[0] == 6 != p.cu_seqlens_q_padded[-1]  # megatron's "restart per sequence" branch
        restarted = apply_rotary_pos_emb(pack, freqs, CONFIG, cu_seqlens=p.cu_seqlens_q_padded, cp_group=group)
        # Megatron's other branch: one frequency per packed token (here from position_ids).
        exact = apply_rotary_pos_emb(pack, per_token.transpose(0, 1).reshape(b * s, 1, 1, dim), CONFIG,
                                     cu_seqlens=p.cu_seqlens_q_padded, cp_group=group)

    ref_pack = reference.transpose(0, 1).reshape(b * s, heads, dim)
    keep = real.reshape(-1)
    assert torch.allclose(restarted[keep], ref_pack[keep], atol=1e-6, rtol=0)
    assert torch.allclose(exact, ref_pack, atol=1e-6, rtol=0)
    # The check can fail: without the restart the second sample of each row gets other rotations.
    wrong = unrestarted.transpose(0, 1).reshape(b * s, heads, dim)
    assert (wrong[4:7] - ref_pack[4:7]).abs().max() > 1e-2 and torch.allclose(wrong[:4], ref_pack[:4], atol=1e-6)
