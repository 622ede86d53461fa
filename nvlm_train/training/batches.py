"""Where a rank's micro-batches come from, and how a schedule pulls them one at a time.

With ``data.broadcast_batches`` (the default) one rank per data-parallel replica reads the data:
the first pipeline stage's TP rank 0. It sends each micro-batch to the other ranks of its replica
point to point over a gloo group (``runtime.broadcast.HostChannel``: host tensors, no device sync,
and the sender never waits for a later stage): first-stage TP peers get every key (their image
tensors arrive over megatron's TP group, on the device), the last stage the text and loss keys,
middle stages only what packed attention needs. Every rank keeps its loader object (so index and
tokenizer checks fail on every rank alike) but only the reading rank iterates it; checkpoints
save that rank's loader state (``_per_rank_object(..., dp_replica=False)``: pp0/tp0).

``MicroBatches`` pulls micro-batch i when the schedule first asks for it; with VPP every model
chunk iterates the same sequence, so a batch is kept until every chunk has taken it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from nvlm_train.data.loader import MultimodalLoader
from nvlm_train.data.packing import collate
from nvlm_train.model.token_counts import TokenCounts, batch_token_counts
from nvlm_train.runtime.broadcast import HostChannel, gloo_twin
from nvlm_train.vision.route import IMAGE_KEYS, batch_tiles

# What each pipeline position needs (see docs/architecture.md, Contracts: Batch).
STAGE_KEYS = ("tokens", "position_ids", "seq_boundaries", "num_samples")  # every stage (shapes, packing)
LOSS_KEYS = ("labels", "loss_mask")  # the last stage
IMAGE_HOST_KEYS = ("image_plans",)  # the first stage, read on the host
# The first stage, sent over the TP group on the device: every other key of the tile route's.
IMAGE_DEVICE_KEYS = tuple(k for k in IMAGE_KEYS if k not in IMAGE_HOST_KEYS)
BATCH_KEYS = STAGE_KEYS + LOSS_KEYS + IMAGE_HOST_KEYS + IMAGE_DEVICE_KEYS


def stage_keys(first: bool, last: bool) -> tuple[str, ...]:
    """The batch keys a pipeline rank at this position reads (``ignore_virtual``: VPP chunks of one
    rank are never the last virtual stage unless the rank is the last one)."""
    keys = STAGE_KEYS + (LOSS_KEYS if last else ())
    return keys + IMAGE_HOST_KEYS + IMAGE_DEVICE_KEYS if first else keys


def padding_batch(loader: MultimodalLoader) -> dict[str, torch.Tensor]:
    """A micro-batch of padding rows (loss mask 0): fills a schedule past the end of a single pass."""
    c = loader.cfg
    return collate([[] for _ in range(c.micro_batch_size)], c.seq_length, c.tokens_per_tile,
                   loader.tokenizer.image_context_id, loader.tokenizer.pad_id, c.image_size, c.tile_route)


@dataclass
class StepStats:
    """Per-step sums over the micro-batches this rank ran (its replica's), added as they stream by."""

    samples: int = 0
    tiles: int = 0
    rows: int = 0
    counts: TokenCounts = field(default_factory=TokenCounts)

    def add(self, batch: dict, tiles: int) -> None:
        rows = int(batch["tokens"].shape[0])
        self.samples += int(batch["num_samples"].sum()) if "num_samples" in batch else rows
        self.tiles += tiles
        self.rows += rows
        self.counts = self.counts + batch_token_counts(batch)


class MicroBatches:
    """The ``count`` micro-batches of one schedule call, pulled when a model chunk first asks."""

    def __init__(self, pull: Callable[[], tuple[dict, int]], count: int, chunks: int):
        self._pull, self.count = pull, count
        self._cache: dict[int, dict] = {}
        self._taken = [0] * chunks  # per chunk: micro-batches it has had
        self.stats = StepStats()

    def _take(self, chunk: int) -> dict:
        i = self._taken[chunk]
        if i >= self.count:
            raise StopIteration
        if i not in self._cache:  # the first chunk to reach i: every earlier one was pulled already
            batch, tiles = self._pull()
            self.stats.add(batch, tiles)
            self._cache[i] = batch
        self._taken[chunk] += 1
        batch = self._cache[i]
        if min(self._taken) > i:  # every chunk has had it
            del self._cache[i]
        return batch

    def iterators(self) -> list[Iterator[dict]]:
        """One iterator per model chunk, each over the same micro-batches."""
        return [_ChunkIterator(self, c) for c in range(len(self._taken))]

    def check_consumed(self) -> None:
        if any(n != self.count for n in self._taken):
            raise RuntimeError(f"the schedule took {self._taken} of {self.count} micro-batches per model chunk")


class _ChunkIterator:
    def __init__(self, batches: MicroBatches, chunk: int):
        self.batches, self.chunk = batches, chunk

    def __iter__(self) -> _ChunkIterator:
        return self

    def __next__(self) -> dict:
        return self.batches._take(self.chunk)


class ReaderFailed(RuntimeError):
    """The replica's reading rank failed while loading (its own error is on its stderr)."""


# The tile count a failing reader sends instead of a batch, so its receivers stop waiting.
_FAILED = -1


class BatchFeed:
    """This rank's micro-batches: read from its loader (the replica's reading rank, or every rank when
    ``broadcast`` is off) or received from the reading rank. Built collectively (gloo groups)."""

    def __init__(self, broadcast: bool, device: torch.device | str):
        self.device = device
        first = parallel_state.is_pipeline_first_stage(ignore_virtual=True)
        last = parallel_state.is_pipeline_last_stage(ignore_virtual=True)
        tp_rank = parallel_state.get_tensor_model_parallel_rank()
        self.tp_group = parallel_state.get_tensor_model_parallel_group()
        self.tp_src = parallel_state.get_tensor_model_parallel_src_rank()
        replica = parallel_state.get_model_parallel_group()  # the TP x PP ranks of this DP replica
        self.broadcast = broadcast and dist.get_world_size(replica) > 1
        self.reads = not self.broadcast or (first and tp_rank == 0)
        self.channel: HostChannel | None = None
        self.tp_images = self.broadcast and first and dist.get_world_size(self.tp_group) > 1
        self.keys = stage_keys(first, last)
        self.dsts: dict[tuple[str, ...], list[int]] = {}  # the reading rank's receivers, by the keys they get
        if self.broadcast:
            group = gloo_twin(replica)
            roles: list = [None] * dist.get_world_size(group)
            dist.all_gather_object(roles, (dist.get_rank(), self.reads, self.keys), group=group)
            src = next(rank for rank, reads, _ in roles if reads)
            for rank, reads, keys in roles:
                if not reads:
                    self.dsts.setdefault(tuple(keys), []).append(rank)
            self.channel = HostChannel(group, src, BATCH_KEYS, num_meta=1, pin=torch.cuda.is_available())

    def micro_batches(self, loader, count: int, chunks: int, pad: bool = False) -> MicroBatches:
        """``count`` micro-batches from ``loader``; ``pad``: padding batches past its end (evaluation)."""
        return MicroBatches(lambda: self.pull(loader, pad), count, chunks)

    def pull(self, loader, pad: bool = False) -> tuple[dict, int]:
        """-> (the next micro-batch, its tile count). Collective within the replica when broadcasting."""
        if not self.reads:
            return self._receive()
        try:
            batch = next(loader)
        except StopIteration:
            if not pad:
                self._tell_failure()
                raise
            batch = padding_batch(loader)
        except BaseException:
            self._tell_failure()
            raise
        tiles = batch_tiles(batch)
        if self.channel is not None:
            for keys, dsts in self.dsts.items():
                mine = [k for k in keys if k in batch]
                self.channel.send(dsts, {k: batch[k] for k in mine if k not in IMAGE_DEVICE_KEYS}, [tiles],
                                  described={k: batch[k] for k in mine if k in IMAGE_DEVICE_KEYS})
        if self.tp_images:
            for k in IMAGE_DEVICE_KEYS:
                if k in batch and batch[k].numel():
                    batch[k] = batch[k].to(self.device, non_blocking=True)
                    dist.broadcast(batch[k], self.tp_src, group=self.tp_group)
        return batch, tiles

    def _tell_failure(self) -> None:
        """Every receiver gets a failure message instead of the batch, and raises ReaderFailed."""
        if self.channel is None:
            return
        for dsts in self.dsts.values():
            self.channel.send(dsts, {}, [_FAILED])
        self.channel.flush(timeout_s=60.0)  # delivered before this rank's error ends the process

    def _receive(self) -> tuple[dict, int]:
        assert self.channel is not None
        batch, described, meta = self.channel.recv()
        if meta[0] == _FAILED:
            raise ReaderFailed(f"the data-parallel replica's reading rank (global rank {self.channel.src}) failed "
                               f"while loading a micro-batch; its error is in its log")
        for k in IMAGE_DEVICE_KEYS:  # the vocabulary order, as the reading rank sent them
            if k in described:
                dtype, shape = described[k]
                batch[k] = torch.empty(shape, dtype=dtype, device=self.device)
                if batch[k].numel():
                    dist.broadcast(batch[k], self.tp_src, group=self.tp_group)
        return batch, meta[0]

    def flush(self) -> None:
        """After a schedule: the reading rank waits until every receiver has its messages."""
        if self.channel is not None:
            self.channel.flush()
