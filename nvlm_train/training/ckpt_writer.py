"""No long-lived helper process for checkpoint saves, so a signal to the whole job cannot break one.

megatron-core 0.16's ``torch_dist`` save hands the write results of its writer processes back
through a queue that lives in a ``multiprocessing.Manager`` process, spawned by the first save and
kept for the rest of the run. A fresh (spawned) interpreter does not share the trainer's signal
handlers, so the SIGTERM/SIGUSR1 that SLURM and ``kill -- -PGID`` deliver to every process of the
job killed it, and the preemption save that followed died with ``BrokenPipeError`` and left
``iter_N.tmp``. Our saves are synchronous: the results are put and read in the trainer process
itself, so an in-process queue is enough. The per-save writer processes are forked and inherit the
trainer's handlers, so they survive the signal.
"""

from __future__ import annotations

import queue
import warnings

from megatron.core.dist_checkpointing.strategies import filesystem_async

_MISSING = object()


def use_in_process_results_queue() -> bool:
    """Give megatron's synchronous saves a thread-safe in-process queue (no Manager process).

    Returns False, with a warning, when this megatron-core has no such queue (the fix would not
    apply there; check that saves still survive a signal to the process group).
    """
    current = getattr(filesystem_async, "_results_queue", _MISSING)
    if current is _MISSING or not hasattr(filesystem_async, "_get_write_results_queue"):
        warnings.warn("megatron-core's filesystem_async has no _results_queue: checkpoint writers may use a "
                      "Manager process that a signal to the whole job kills", stacklevel=2)
        return False
    if not isinstance(current, queue.Queue):
        shutdown_manager(current)
        filesystem_async._results_queue = queue.Queue()
    return True


def shutdown_manager(results_queue) -> None:
    """Stop the Manager process behind a megatron results queue, if it has one."""
    manager = getattr(results_queue, "_manager", None)
    if manager is not None:
        manager.shutdown()
