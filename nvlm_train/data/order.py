"""Deterministic sample order: a pure function of (seed, position), so loader state is one integer.

Blending works in blocks of ``block`` positions: each block holds a fixed number of draws per
dataset (weights rounded by largest remainder) in a seeded shuffled order. Dataset ``d``'s k-th draw
is sample ``perm(seed, d, epoch)[k % size]`` with ``epoch = k // size``, so every dataset is
traversed without repetition within an epoch and re-shuffled after. Data-parallel ranks take a
strided slice of positions (rank r gets r, r + dp, r + 2dp, ...): disjoint, and together complete.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np


def block_counts(weights: Sequence[float], block: int) -> np.ndarray:
    """Draws per dataset per block: largest-remainder rounding of ``block * w / sum(w)``, each >= 1."""
    w = np.asarray(weights, dtype=np.float64)
    if len(w) == 0 or (w <= 0).any():
        raise ValueError(f"weights must be positive, got {list(weights)}")
    if block < len(w):
        raise ValueError(f"block {block} smaller than the number of datasets {len(w)}")
    exact = block * w / w.sum()
    counts = np.maximum(np.floor(exact).astype(np.int64), 1)
    order = np.argsort(-(exact - np.floor(exact)), kind="stable")
    i = 0
    while counts.sum() < block:
        counts[order[i % len(w)]] += 1
        i += 1
    while counts.sum() > block:
        j = int(np.argmax(counts))
        counts[j] -= 1
    return counts


class BlendOrder:
    """Global position -> (dataset index, sample index within that dataset)."""

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], seed: int, block: int = 4096,
                 shuffle: bool = True):
        if len(sizes) != len(weights) or any(n <= 0 for n in sizes):
            raise ValueError(f"every dataset needs samples: sizes={list(sizes)}")
        self.sizes = [int(n) for n in sizes]
        self.seed, self.shuffle = int(seed), shuffle
        self.block = max(block, len(sizes))
        self.counts = block_counts(weights, self.block)
        self._block = functools.lru_cache(maxsize=8)(self._make_block)
        self._perm = functools.lru_cache(maxsize=16)(self._make_perm)

    def _make_block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        ds = np.repeat(np.arange(len(self.counts)), self.counts)
        if self.shuffle:
            ds = np.random.default_rng([self.seed, 1, b]).permutation(ds)
        occ = np.empty_like(ds)
        for d in range(len(self.counts)):
            where = ds == d
            occ[where] = np.arange(int(where.sum()))
        return ds, occ

    def _make_perm(self, d: int, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.sizes[d])
        return np.random.default_rng([self.seed, 2, d, epoch]).permutation(self.sizes[d])

    def __getitem__(self, g: int) -> tuple[int, int]:
        b, p = divmod(int(g), self.block)
        ds, occ = self._block(b)
        d = int(ds[p])
        k = b * int(self.counts[d]) + int(occ[p])
        epoch, i = divmod(k, self.sizes[d])
        return d, int(self._perm(d, epoch)[i])


class SequentialOrder:
    """One pass over all datasets in order (evaluation, stats); ``len`` positions, no blending."""

    def __init__(self, sizes: Sequence[int]):
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, g: int) -> tuple[int, int]:
        if not 0 <= g < len(self):
            raise IndexError(g)
        d = int(np.searchsorted(self.offsets, g, side="right") - 1)
        return d, int(g - self.offsets[d])


def rank_position(local: int, dp_rank: int, dp_size: int) -> int:
    """Global position of a rank's ``local``-th sample (strided sharding)."""
    return local * dp_size + dp_rank
