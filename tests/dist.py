"""Run a test function on N gloo ranks: ``fn(rank, world, *args)``, which initialises itself."""

from __future__ import annotations

import os

from nvlm_train.runtime.spawn import SpawnError
from nvlm_train.runtime.spawn import run_ranks as spawn_ranks


def _with_rank(fn, args):
    import torch

    torch.set_num_threads(1)
    return fn(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), *args)


def run_ranks(fn, world: int, *args, timeout: float = 300.0) -> list:
    """fn(rank, world, *args) on ``world`` processes; returns the per-rank results."""
    try:
        return spawn_ranks(_with_rank, world, fn, args, timeout_s=timeout)
    except SpawnError as exc:
        raise AssertionError(str(exc)) from exc
