"""Preemption: SIGTERM / SIGUSR1 ask the loop to save a checkpoint and exit 0 at the next step."""

from __future__ import annotations

import signal

import torch
import torch.distributed as dist


class PreemptionFlag:
    def __init__(self, signals=(signal.SIGTERM, signal.SIGUSR1)):
        self._requested = False
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
        self._requested = True

    def agreed(self) -> bool:
        """Collective: true on every rank if any rank was signalled (so all save together)."""
        flag = torch.tensor([1 if self._requested else 0], dtype=torch.int32)
        if dist.is_initialized():
            flag = flag.to("cuda") if torch.cuda.is_available() and dist.get_backend() == "nccl" else flag
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
