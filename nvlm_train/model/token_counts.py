"""What a micro-batch asks of the LLM: real tokens, padding and causal-attention work per packed sample.

Throughput and FLOPs count these, not ``rows x seq_length``: padding costs no attention work (THD)
and carries no loss, and a packed row of samples ``L_1..L_n`` needs sum L_i^2 / 2 attention scores, not
``seq_length^2 / 2``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from nvlm_train.model.packing import sample_lengths


@dataclass(frozen=True)
class TokenCounts:
    real_tokens: int = 0  # tokens of packed samples (text and image-context), padding excluded
    padded_tokens: int = 0  # rows x seq_length
    sum_sq_lengths: int = 0  # sum over samples of L_i^2
    samples: int = 0

    def __add__(self, other: TokenCounts) -> TokenCounts:
        return TokenCounts(self.real_tokens + other.real_tokens, self.padded_tokens + other.padded_tokens,
                           self.sum_sq_lengths + other.sum_sq_lengths, self.samples + other.samples)

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.real_tokens / self.padded_tokens if self.padded_tokens else 0.0


def lengths_counts(rows: Iterable[Iterable[int]], seq_length: int) -> TokenCounts:
    """Counts of rows given as sample lengths, each row padded to ``seq_length``."""
    rows = [list(r) for r in rows]
    return TokenCounts(real_tokens=sum(map(sum, rows)), padded_tokens=len(rows) * seq_length,
                       sum_sq_lengths=sum(n * n for r in rows for n in r), samples=sum(map(len, rows)))


def batch_token_counts(batch: dict) -> TokenCounts:
    """Counts of one micro-batch (host tensors); a batch without ``seq_boundaries`` is one sample per row."""
    b, s = batch["tokens"].shape
    bounds = batch.get("seq_boundaries")
    if bounds is None:
        return lengths_counts([[s]] * b, s)
    return lengths_counts(sample_lengths(bounds.cpu(), batch.get("num_samples")), s)
