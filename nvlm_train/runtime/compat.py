"""Every private megatron-core / torch attribute the project touches, in one place, version-checked.

Each adaptation says which versions it was checked on and what breaks without it. Imports of
megatron-core are local to the functions so that light packages (data, checkpoint layout) can
use this module without loading megatron.

* **RNG helpers** (``megatron.core.tensor_parallel.random._get/_set_cuda_rng_state``): swapped
  for CPU equivalents by the CPU runtime, so the model-parallel RNG tracker forks the CPU generator.
* **Checkpoint writer results queue** (``dist_checkpointing.strategies.filesystem_async
  ._results_queue``): megatron-core 0.16's ``torch_dist`` save hands its writers' results back
  through a queue living in a ``multiprocessing.Manager`` process spawned by the first save. A
  spawned interpreter does not share the trainer's signal handlers, so the SIGTERM/SIGUSR1 that
  SLURM and ``kill -- -PGID`` deliver to the job killed it and the preemption save that followed
  died with ``BrokenPipeError``. Our saves are synchronous, so an in-process queue is enough; the
  per-save writer processes are forked and inherit the trainer's handlers.
* **"Unknown MLP type" warning** (``TransformerLayer`` in 0.16): our ViT layers use an ``MLP``
  subclass, so every layer logs it although the default kwargs are right for it (without
  ``tp_group`` the MLP takes the TP group from ``parallel_state``, as the TP tests check).
* **Sharded keys** (``dist_checkpointing.strategies.torch._replace_state_dict_keys_with_sharded_keys``):
  the streaming save regroups a sharded state dict by checkpoint key exactly as megatron's own
  ``torch_dist`` save does before handing it to torch DCP.
* **DataLoader worker shutdown** (``_MultiProcessingDataLoaderIter._shutdown_workers``): stops a
  loader's workers now instead of at garbage collection, so a closed loader frees its processes.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import warnings
from collections.abc import Callable, Iterator
from typing import Any

CHECKED_MEGATRON_VERSIONS = ("0.16.",)
_MISSING = object()


def megatron_version() -> str:
    from megatron.core import package_info

    return package_info.__version__


def quirk_applies(version: str | None = None) -> bool:
    """Whether this megatron-core is one the version-specific adaptations were checked on."""
    return (version or megatron_version()).startswith(CHECKED_MEGATRON_VERSIONS)


# -- RNG helpers -----------------------------------------------------------------------------------
def megatron_rng_patches(get_state: Callable, set_state: Callable) -> list[tuple[Any, str, Any]]:
    """(module, attribute, replacement) for megatron's private CUDA RNG-state helpers."""
    from megatron.core.tensor_parallel import random as mrandom

    for name in ("_get_cuda_rng_state", "_set_cuda_rng_state"):
        if not hasattr(mrandom, name):
            raise RuntimeError(f"megatron-core {megatron_version()} has no tensor_parallel.random.{name}; the CPU "
                               f"runtime was checked on {CHECKED_MEGATRON_VERSIONS} and needs adapting")
    return [(mrandom, "_get_cuda_rng_state", get_state), (mrandom, "_set_cuda_rng_state", set_state)]


# -- checkpoint writers ------------------------------------------------------------------------------
def use_in_process_results_queue() -> bool:
    """Give megatron's synchronous saves a thread-safe in-process queue (no Manager process).

    Returns False, with a warning, when this megatron-core has no such queue (the fix would not
    apply there; check that saves still survive a signal to the process group).
    """
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    current = getattr(filesystem_async, "_results_queue", _MISSING)
    if current is _MISSING or not hasattr(filesystem_async, "_get_write_results_queue"):
        warnings.warn("megatron-core's filesystem_async has no _results_queue: checkpoint writers may use a "
                      "Manager process that a signal to the whole job kills", stacklevel=2)
        return False
    if not isinstance(current, queue.Queue):
        _shutdown_manager(current)
        filesystem_async._results_queue = queue.Queue()
    return True


def _shutdown_manager(results_queue) -> None:
    """Stop the Manager process behind a megatron results queue, if it has one."""
    manager = getattr(results_queue, "_manager", None)
    if manager is not None:
        manager.shutdown()


def shutdown_checkpoint_writers() -> None:
    """Stop a Manager process megatron's checkpoint writer may have started (saves made outside our
    ``save_checkpoint``); left running, it keeps every rank alive seconds longer at exit."""
    import sys

    filesystem_async = sys.modules.get("megatron.core.dist_checkpointing.strategies.filesystem_async")
    if filesystem_async is None:  # never imported: nothing was saved
        return
    _shutdown_manager(getattr(filesystem_async, "_results_queue", None))
    filesystem_async._results_queue = None


def sharded_tensors_by_key(sharded_state_dict) -> dict:
    """{checkpoint key: [ShardedTensor | ShardedObject, ...]} of a sharded state dict, as torch_dist saves it."""
    from megatron.core.dist_checkpointing.strategies import torch as mtorch

    regroup = getattr(mtorch, "_replace_state_dict_keys_with_sharded_keys", None)
    if regroup is None:
        raise RuntimeError(f"megatron-core {megatron_version()} has no _replace_state_dict_keys_with_sharded_keys; "
                           f"the streaming save was checked on {CHECKED_MEGATRON_VERSIONS} and needs adapting")
    by_key, _, _ = regroup(sharded_state_dict, False)
    return by_key


# -- megatron log noise ------------------------------------------------------------------------------
_MLP_LOGGER = "megatron.core.transformer.transformer_layer"
_MLP_MESSAGE = "Unknown MLP type"


class _DropUnknownMLP(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_MLP_MESSAGE)


@contextlib.contextmanager
def no_unknown_mlp_warning() -> Iterator[None]:
    """Around building layers whose MLP is an ``MLP`` subclass (our ViT layers), on checked versions only."""
    if not quirk_applies():
        yield
        return
    logger, drop = logging.getLogger(_MLP_LOGGER), _DropUnknownMLP()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


# -- torch DataLoader ---------------------------------------------------------------------------------
def shutdown_dataloader_workers(iterator) -> None:
    """Stop a DataLoader iterator's worker processes now (a no-op for single-process iterators)."""
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
