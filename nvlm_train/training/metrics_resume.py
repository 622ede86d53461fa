"""``metrics.jsonl`` on resume: drop the records of iterations the run is about to repeat.

A run stopped between two saves (SIGKILL, a node failure, a save cut short) logged iterations its
latest checkpoint does not hold; the resumed run trains and logs them again. Keeping the file
equal to "one record per iteration up to the checkpoint" makes every iteration appear once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def drop_metrics_after(run_dir: Path, iteration: int) -> int:
    """Rewrite ``<run_dir>/metrics.jsonl`` (atomically) without records past ``iteration``.

    Returns how many records were dropped. Lines that are not JSON objects with an iteration
    (e.g. a line cut short by a kill) are dropped too.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            keep = int(record["iteration"]) <= iteration
        except (ValueError, TypeError, KeyError):
            keep = False
        if keep:
            kept.append(line)
        elif line.strip():
            dropped += 1
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        os.replace(tmp, path)
    return dropped
