"""Packed rows as megatron-core ``PackedSeqParams`` (THD): one attention sequence per packed sample.

The micro-batch ``[b, s]`` becomes one THD pack of ``t = b * s`` tokens (row-major). Every packed
sample is one sequence of ``cu_seqlens_q``; a row's trailing padding is THD padding of the row's
last sample (``cu_seqlens_q_padded``), so attention kernels (Transformer Engine's, ``varlen_attn``,
per-segment SDPA) never look across samples and spend nothing on padding. No ``s x s`` mask exists.
RoPE restarts at every ``cu_seqlens_q_padded`` offset, which is what the batches' ``position_ids``
say (``check_positions``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from megatron.core.packed_seq_params import PackedSeqParams


@dataclass
class PackedRows(PackedSeqParams):
    """``PackedSeqParams`` plus host-side tables for the ``torch`` attention (TE reads only the base fields).

    ``segments``: (start in the pack, real length) per sample; ``real_index``: positions of the
    non-padding tokens ([n_real], None without padding); ``max_real``: longest sample.
    """

    segments: tuple[tuple[int, int], ...] = ()
    total_tokens: int = 0
    real_index: torch.Tensor | None = None
    max_real: int = 0


def sample_lengths(seq_boundaries: torch.Tensor, num_samples: torch.Tensor | None = None) -> list[list[int]]:
    """Real sample lengths per row from ``[b, n+1]`` cumulative starts (host tensors).

    Without ``num_samples`` every non-empty segment counts as a sample (padding included).
    """
    bounds = seq_boundaries.tolist()
    counts = num_samples.tolist() if num_samples is not None else [None] * len(bounds)
    rows = []
    for r, (row, n) in enumerate(zip(bounds, counts)):
        lengths = [b - a for a, b in zip(row[:-1], row[1:]) if b > a]
        if n is not None:
            if not 0 <= n <= len(lengths):  # 0: an all-padding row (the end of an evaluation pass)
                raise ValueError(f"row {r}: num_samples={n} but seq_boundaries {row} hold {len(lengths)} segments")
            lengths = lengths[:n]
        rows.append(lengths)
    return rows


def packed_rows(seq_boundaries: torch.Tensor | None, num_samples: torch.Tensor | None, batch: int,
                seq_length: int, device: torch.device | str | None = None) -> PackedRows:
    """THD parameters for a micro-batch; without ``seq_boundaries`` every row is one sequence."""
    if seq_boundaries is None:
        rows = [[seq_length]] * batch
    else:
        rows = sample_lengths(seq_boundaries.cpu(), None if num_samples is None else num_samples.cpu())
        if len(rows) != batch:
            raise ValueError(f"seq_boundaries has {len(rows)} rows, tokens {batch}")
    cu, cu_padded, segments, has_padding = [0], [0], [], False
    for r, lengths in enumerate(rows):
        row_start = r * seq_length
        used = sum(lengths)
        if used > seq_length:
            raise ValueError(f"row {r} holds {used} tokens > seq_length {seq_length}")
        cursor = row_start
        if not lengths:  # an all-padding row: an empty sequence whose padded extent is the whole row
            cu.append(cu[-1])
            cu_padded.append(cu_padded[-1] + seq_length)
        for i, n in enumerate(lengths):
            segments.append((cursor, n))
            cu.append(cu[-1] + n)
            pad = seq_length - used if i == len(lengths) - 1 else 0
            cu_padded.append(cu_padded[-1] + n + pad)
            cursor += n
        has_padding |= used < seq_length
    padded_lengths = [b - a for a, b in zip(cu_padded[:-1], cu_padded[1:])]
    real_index = None
    if has_padding:  # the index of every real token in the pack
        real_index = torch.cat([torch.arange(r * seq_length, r * seq_length + sum(lengths))
                                for r, lengths in enumerate(rows)]).to(device)
    cu_t = torch.tensor(cu, dtype=torch.int32).to(device)
    cu_padded_t = torch.tensor(cu_padded, dtype=torch.int32).to(device)
    max_padded = max(padded_lengths)
    return PackedRows(
        qkv_format="thd",
        cu_seqlens_q=cu_t, cu_seqlens_kv=cu_t,
        cu_seqlens_q_padded=cu_padded_t, cu_seqlens_kv_padded=cu_padded_t,
        max_seqlen_q=max_padded, max_seqlen_kv=max_padded,
        segments=tuple(segments), total_tokens=batch * seq_length, real_index=real_index,
        max_real=max((n for _, n in segments), default=0),
    )


def one_full_sample_per_row(seq_boundaries: torch.Tensor | None, num_samples: torch.Tensor | None,
                            seq_length: int) -> bool:
    """Every row is one sample filling the row: plain causal attention is exact (and fastest)."""
    if seq_boundaries is None:
        return True
    return all(lengths == [seq_length] for lengths in sample_lengths(seq_boundaries.cpu(), num_samples))


def segment_ids(seq_boundaries: torch.Tensor, seq_length: int) -> torch.Tensor:
    """[b, n+1] cumulative segment starts (last = s, padded by repeating s) -> [b, s] ids."""
    pos = torch.arange(seq_length, device=seq_boundaries.device)
    inner = seq_boundaries[:, 1:].contiguous()
    return torch.searchsorted(inner, pos.expand(inner.shape[0], -1).contiguous(), right=True)


def check_positions(position_ids: torch.Tensor, seq_boundaries: torch.Tensor) -> None:
    """THD RoPE restarts at every segment start; refuse batches whose ``position_ids`` say otherwise."""
    b, s = position_ids.shape
    seg = segment_ids(seq_boundaries, s)  # [b, s]
    expected = torch.arange(s, device=position_ids.device) - seq_boundaries.gather(1, seg)
    if not torch.equal(position_ids, expected):
        bad = (position_ids != expected).nonzero()[0].tolist()
        raise ValueError(
            f"position_ids must restart at 0 at every packed sample (packed attention applies RoPE per "
            f"sample from seq_boundaries); row {bad[0]} position {bad[1]} has {int(position_ids[bad[0], bad[1]])}, "
            f"expected {int(expected[bad[0], bad[1]])}"
        )
