"""Preemption: SIGTERM / SIGUSR1 / SIGINT ask the loop to save a checkpoint and exit 0 at the next step.

The handler is installed once per process, as early as the entry point can (``install_process_flag``),
and stays until the process exits: SLURM and ``kill -- -PGID`` signal every process of a job, and the
launchers pass the signal on again, so copies keep arriving while the ranks save and tear down. A
restored default handler would let one of them kill a rank that already saved (non-zero exit); and
CPython restores the default handlers itself while the interpreter shuts down, so at exit the
signals are ignored instead.
"""

from __future__ import annotations

import atexit
import signal

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class PreemptionFlag:
    def __init__(self, signals=STOP_SIGNALS):
        self._requested: signal.Signals | None = None
        self._signals = signals
        self._previous = {}

    def install(self) -> PreemptionFlag:
        for sig in self._signals:
            self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handler(self, signum, frame) -> None:
        self._requested = self._requested or signal.Signals(signum)

    @property
    def requested(self) -> signal.Signals | None:
        """The first stop signal this process received, if any."""
        return self._requested

    def agreed(self) -> bool:
        """Collective: true on every rank if any rank was signalled (so all save together)."""
        flag = torch.tensor([1 if self._requested else 0], dtype=torch.int32)
        if dist.is_initialized():
            flag = flag.to("cuda") if torch.cuda.is_available() and dist.get_backend() == "nccl" else flag
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


_process_flag: PreemptionFlag | None = None


def install_process_flag() -> PreemptionFlag:
    """The process-wide flag, installed on the first call and never uninstalled (see module doc)."""
    global _process_flag
    if _process_flag is None:
        _process_flag = PreemptionFlag().install()
        atexit.register(_ignore_stop_signals)
    return _process_flag


def _ignore_stop_signals() -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
