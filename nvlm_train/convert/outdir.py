"""Outputs appear whole or not at all: written into a hidden temporary sibling, moved into place at the end.

A failure (or Ctrl-C) removes the temporary folder, so no partial export is ever left where a user
would load it; an existing output is replaced only with ``force``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from nvlm_train.convert.errors import ConvertError


def check_output(out: Path, force: bool) -> None:
    """Fail early (before any work) when ``out`` exists and may not be replaced."""
    out = Path(out)
    if out.exists() and not force:
        raise ConvertError(f"output {out} already exists; pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise ConvertError(f"output {out} exists and is not a directory")


@contextlib.contextmanager
def staged_output(out: Path, force: bool) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it replaces ``out`` atomically."""
    out = Path(out).absolute()
    check_output(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
