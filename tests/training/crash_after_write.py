"""``python -m tests.training.crash_after_write <overrides>``: nvlm-train whose first checkpoint save is
hard-killed after every tensor is written and before it is published (a crash mid-save)."""

from __future__ import annotations

import os

import psutil

from nvlm_train.checkpoint import dist as ckpt_dist


def _die(*args, **kwargs) -> None:
    for child in psutil.Process().children(recursive=True):  # e.g. checkpoint writer processes
        child.kill()
    os._exit(9)


if __name__ == "__main__":
    ckpt_dist._publish = _die
    from nvlm_train.cli.train import main

    main()
