"""Tell the batch script that training stopped on a signal before its last iteration.

``launch/slurm/train.sbatch`` requeues a job whose ranks saved and stopped on a signal SLURM did not
also send to the batch shell (``scancel --signal=TERM|USR1`` to the steps, a preemption notice
during ``GraceTime``): their exit status is 0 either way, so the script reads this file instead.
The script names it in ``NVLM_STOP_FILE``; without that variable nothing is written.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

ENV = "NVLM_STOP_FILE"


def write_stop_marker(sig: signal.Signals | None, iteration: int) -> None:
    """Record (global rank 0 only) which signal stopped training at which iteration."""
    target = os.environ.get(ENV)
    if not target:
        return
    path = Path(target)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{sig.name if sig else 'signal'} {iteration}\n")
    os.replace(tmp, path)
