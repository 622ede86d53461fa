"""Where checkpoints live on disk (no megatron import)::

    <run.dir>/checkpoints/latest_checkpointed_iteration.txt   # "8"
    <run.dir>/checkpoints/iter_0000008/                        # one dist checkpoint
"""

from __future__ import annotations

import os
from pathlib import Path

TRACKER = "latest_checkpointed_iteration.txt"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used as asked; the message says why and what to do."""


def iteration_dir(root: Path, iteration: int) -> Path:
    return Path(root) / f"iter_{iteration:07d}"


def latest_iteration(root: Path) -> int | None:
    """The iteration the tracker of a ``checkpoints/`` folder names, or None when there is none yet."""
    tracker = Path(root) / TRACKER
    if not tracker.is_file():
        return None
    return int(tracker.read_text().strip())


def resolve_checkpoint(path: str | os.PathLike) -> tuple[Path, int]:
    """A ``checkpoints/`` folder (its latest) or one ``iter_*`` folder -> (folder, iteration)."""
    path = Path(path)
    latest = latest_iteration(path)
    if latest is not None:
        folder, iteration = iteration_dir(path, latest), latest
    elif path.name.startswith("iter_") and path.is_dir():
        folder, iteration = path, int(path.name.split("_", 1)[1])
    else:
        raise CheckpointError(
            f"{path} is not a checkpoint: expected a checkpoints/ folder (with {TRACKER}) or an iter_* folder"
        )
    if not (folder / "metadata.json").is_file():
        raise CheckpointError(f"checkpoint {folder} is missing or incomplete (no metadata.json)")
    return folder, iteration
