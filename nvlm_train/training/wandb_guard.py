"""wandb that cannot take the run down with it when a signal reaches the whole job.

wandb logs through a service process of its own (``wandb-core``), a child of rank 0. SLURM and
``kill -- -PGID`` signal every process of a job, so a preemption kills that service too, and the
next ``wandb.log`` raises ``ConnectionResetError`` in rank 0 before the preemption save: no
checkpoint, a non-zero exit. This wrapper turns the first wandb failure into one message and stops
using wandb; ``metrics.jsonl`` keeps every record, and an offline run can be synced later.
"""

from __future__ import annotations

import sys


class SignalSafeWandb:
    """Forwards ``log``/``finish`` to a wandb run until the first failure, then does nothing."""

    def __init__(self, run):
        self._run = run

    def _call(self, method: str, *args, **kwargs):
        if self._run is None:
            return None
        try:
            return getattr(self._run, method)(*args, **kwargs)
        except Exception as exc:  # wandb raises connection, OS and its own errors here
            self._run = None
            print(f"nvlm-train: wandb stopped working ({type(exc).__name__}: {exc}), e.g. its service process "
                  f"got the job's stop signal; metrics.jsonl keeps logging", file=sys.stderr, flush=True)
            return None

    def log(self, *args, **kwargs):
        return self._call("log", *args, **kwargs)

    def finish(self, *args, **kwargs):
        return self._call("finish", *args, **kwargs)


def guard_wandb(metrics):
    """Wrap a MetricsWriter's wandb run (if any) in SignalSafeWandb; returns the writer."""
    if getattr(metrics, "wandb", None) is not None:
        metrics.wandb = SignalSafeWandb(metrics.wandb)
    return metrics
