"""A megatron-core save strategy that makes each tensor only when it is written.

megatron's own ``torch_dist`` writer resolves every tensor before writing, so saving a model means
holding it. The importer builds the model on the meta device instead and gives this strategy a
``produce(param)`` function returning one parameter's real values; torch DCP's ``FileSystemWriter``
asks for one item at a time and, with a file per item, drops it once written, so the peak is about
one layer, not the model. The files are the standard ``torch_dist`` format: megatron (and
``nvlm-train``) load them at any TP/PP.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from megatron.core.dist_checkpointing.mapping import ShardedTensor
from megatron.core.dist_checkpointing.strategies.base import SaveShardedStrategy
from megatron.core.dist_checkpointing.strategies.torch import MCoreSavePlanner, mcore_to_pyt_state_dict
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint import save as dcp_save
from torch.distributed.checkpoint.planner import WriteItem, WriteItemType

from nvlm_train.runtime.compat import sharded_tensors_by_key

Producer = Callable[[torch.Tensor], torch.Tensor]  # a (meta) parameter -> its values, same shape


class _LazyPlanner(MCoreSavePlanner):
    """Resolves a tensor write item by producing its parameter and cutting the shard's view from it."""

    def __init__(self, shards: dict[tuple[str, tuple[int, ...]], torch.Tensor], produce: Producer):
        super().__init__(dedup_replicated_tensors=False, flatten_state_dict=False)
        self._shards = shards
        self._produce = produce
        self._last: tuple[int, torch.Tensor] | None = None  # gate/up halves of one fc1 come in a row

    def _values_of(self, base: torch.Tensor) -> torch.Tensor:
        if self._last is None or self._last[0] != id(base):
            self._last = None  # free the previous parameter before making the next
            self._last = (id(base), self._produce(base))
        return self._last[1]

    def resolve_data(self, write_item: WriteItem):
        if write_item.type == WriteItemType.BYTE_IO:
            return super().resolve_data(write_item)
        index = write_item.index
        view = self._shards[(index.fqn, tuple(index.offset))]
        base = view if view._base is None else view._base
        if not base.is_contiguous():
            raise RuntimeError(f"{index.fqn}: its parameter is not contiguous; cannot map the shard onto it")
        full = self._values_of(base)
        if tuple(full.shape) != tuple(base.shape) or full.stride() != base.stride():
            raise RuntimeError(f"{index.fqn}: produced {list(full.shape)}, need {list(base.shape)} (contiguous)")
        # The shard is a view of its parameter (e.g. one half of a fused fc1): cut the same view.
        piece = full.as_strided(view.shape, view.stride(), view.storage_offset() - base.storage_offset())
        return piece.reshape(write_item.tensor_data.chunk.sizes)


class StreamingTorchDistSave(SaveShardedStrategy):
    """``dist_checkpointing.save(..., sharded_strategy=StreamingTorchDistSave(produce))``."""

    def __init__(self, produce: Producer):
        super().__init__("torch_dist", 1)
        self.produce = produce

    @property
    def can_handle_sharded_objects(self) -> bool:
        return True

    def save(self, sharded_state_dict, checkpoint_dir: str | Path) -> None:
        by_key = sharded_tensors_by_key(sharded_state_dict)
        shards = {(sh.key, tuple(sh.global_offset)): sh.data
                  for values in by_key.values() for sh in values if isinstance(sh, ShardedTensor)}
        pyt_state_dict = mcore_to_pyt_state_dict(by_key, False)
        # One file per tensor: torch's writer keeps each written tensor until its file is closed, so a
        # single file would hold every tensor that is not stacked across layers (embeddings, output layer).
        writer = FileSystemWriter(str(checkpoint_dir), single_file_per_rank=False, thread_count=1)
        dcp_save(pyt_state_dict, storage_writer=writer, planner=_LazyPlanner(shards, self.produce))
