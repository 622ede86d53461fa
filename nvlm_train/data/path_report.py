"""Why a recipe found no data: one paragraph naming the recipe, each dataset, the patterns tried and
what was found there, so a wrong ``data.data_root`` or a folder of loose files is fixed at once."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import braceexpand

from nvlm_train.data.errors import UNREADABLE_SHARD
from nvlm_train.data.recipe import Recipe
from nvlm_train.data.shards import ShardIndex, is_remote

_SHOWN = 4  # file names quoted per folder


class DataPathError(ValueError):
    """No dataset of a recipe has a readable sample; the message says what was looked for and found."""


def _folder_contents(folder: Path) -> str:
    """What is at ``folder``, or at its nearest existing parent when it does not exist."""
    said = ""
    while not folder.is_dir():
        if folder.exists():
            return f"{said}{folder} is not a folder"
        said += f"{folder} does not exist; "
        if folder.parent == folder:
            return said.rstrip("; ")
        folder = folder.parent
    names = sorted(p.name for p in folder.iterdir())
    if not names:
        return f"{said}{folder} is empty"
    shown = ", ".join(names[:_SHOWN]) + (f", ... ({len(names)} entries)" if len(names) > _SHOWN else "")
    return f"{said}{folder} holds {shown}"


def _shard_problem(idx: ShardIndex | None) -> str:
    if idx is None or not idx.problem:
        return "no samples"
    what = "not a readable tar" if idx.problem == UNREADABLE_SHARD else idx.problem.replace("_", " ")
    return f"{what} ({idx.message})" if idx.message else what


def _pattern_report(pattern: str, indexes: dict[str, ShardIndex]) -> str:
    if is_remote(pattern):
        found = [indexes.get(pattern)]
        matches = [pattern]
    else:
        matches = []
        for p in braceexpand.braceexpand(pattern):
            p = p[len("file://"):] if p.startswith("file://") else p
            matches.extend(sorted(glob.glob(p)) if glob.has_magic(p) else ([p] if os.path.exists(p) else []))
        found = [indexes.get(m) for m in matches]
    if not matches:
        return f"{pattern} matched nothing ({_folder_contents(Path(pattern).parent)})"
    problems = [f"{Path(m).name}: {_shard_problem(idx)}" for m, idx in zip(matches, found)]
    shown = "; ".join(problems[:_SHOWN]) + (f"; ... ({len(problems)} files)" if len(problems) > _SHOWN else "")
    return f"{pattern} matched {len(matches)} file(s), none readable ({shown})"


def no_data_message(recipe: Recipe, data_root: str | None, indexes: dict[str, ShardIndex]) -> str:
    """The paragraph for a recipe none of whose datasets has a readable sample.

    ``indexes``: shard path -> its index (problem and message), as the loader indexed them.
    """
    root = f"data_root {data_root}" if data_root else "no data_root"
    parts = [f"dataset {spec.name!r}: " + "; ".join(_pattern_report(p, indexes) for p in spec.paths)
             for spec in recipe.datasets]
    return (f"recipe {recipe.name} ({recipe.source}, {root}) has no readable samples in any dataset. "
            + ". ".join(parts)
            + ". Shards must be webdataset .tar files (nvlm-data build-shards writes them from loose files); "
              "check data.data_root and the recipe's paths")
