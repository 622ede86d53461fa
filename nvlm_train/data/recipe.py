"""Dataset blends (``data_recipes/*.yaml``): weighted mixtures of shard sets with per-dataset options.

Format::

    name: demo
    defaults: {max_tiles: 6}          # optional, applied to every dataset
    datasets:
      - name: synth-train
        paths: ["${DATA_ROOT}/train/*.tar"]   # list or one string; brace patterns and globs
        weight: 0.9
        kind: auto                    # auto | conversation | caption | text
        max_tiles: 6                  # optional; the loader's max_tiles still caps it
        caption_prompt: "<image>\\nBriefly describe this image."
        system_prompt: null

``${DATA_ROOT}`` (or any ``${VAR}``) comes from the ``data_root`` argument or the environment
(``NVLM_DATA_ROOT`` for DATA_ROOT); other relative paths are relative to ``data_root`` if given,
else to the recipe file's directory.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from nvlm_train.data.samples import DEFAULT_CAPTION_PROMPT, KINDS, SampleOptions
from nvlm_train.resources import resource_dir

DATASET_KEYS = {"name", "paths", "weight", "kind", "max_tiles", "caption_prompt", "system_prompt"}
OPTION_KEYS = DATASET_KEYS - {"name", "paths", "weight"}
_VAR_RE = re.compile(r"\$\{(\w+)\}")


class RecipeError(ValueError):
    """A recipe is malformed; the message names the file and the offending entry."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    paths: tuple[str, ...]
    weight: float = 1.0
    kind: str = "auto"
    max_tiles: int | None = None
    caption_prompt: str = DEFAULT_CAPTION_PROMPT
    system_prompt: str | None = None

    @property
    def sample_options(self) -> SampleOptions:
        return SampleOptions(kind=self.kind, caption_prompt=self.caption_prompt, system_prompt=self.system_prompt)


@dataclass(frozen=True)
class Recipe:
    name: str
    datasets: tuple[DatasetSpec, ...]
    source: str = "<inline>"
    description: str = ""
    extra: dict = field(default_factory=dict)


def recipes_dir() -> Path:
    """``data_recipes/`` of this installation (``nvlm_train.resources``; override with NVLM_RECIPES_DIR)."""
    return resource_dir("data_recipes")


def available_recipes() -> list[str]:
    d = recipes_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def _substitute(path: str, variables: dict[str, str], where: str) -> str:
    def repl(m: re.Match) -> str:
        name = m.group(1)
        if name in variables:
            return variables[name]
        env_name = "NVLM_DATA_ROOT" if name == "DATA_ROOT" else name
        if env_name in os.environ:
            return os.environ[env_name]
        raise RecipeError(f"{where}: path {path!r} uses ${{{name}}} but it is not set "
                          f"(pass data_root= / --data-root, or set ${env_name})")

    return _VAR_RE.sub(repl, path)


def _dataset(entry: object, i: int, defaults: dict, where: str, base: Path, variables: dict[str, str]) -> DatasetSpec:
    at = f"{where}: datasets[{i}]"
    if not isinstance(entry, dict):
        raise RecipeError(f"{at} must be a mapping, got {type(entry).__name__}")
    unknown = set(entry) - DATASET_KEYS
    if unknown:
        raise RecipeError(f"{at} has unknown keys {sorted(unknown)}; allowed: {sorted(DATASET_KEYS)}")
    d = {**defaults, **entry}
    name = d.get("name", f"dataset{i}")
    at = f"{where}: dataset {name!r}"
    paths = d.get("paths")
    if isinstance(paths, str):
        paths = [paths]
    if not paths or not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
        raise RecipeError(f"{at}: 'paths' must be a non-empty list of shard paths/patterns")
    resolved = []
    for p in paths:
        p = _substitute(p, variables, at)
        if "://" not in p and not p.startswith("pipe:") and not os.path.isabs(p):
            p = str(base / p)
        resolved.append(p)
    weight = d.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
        raise RecipeError(f"{at}: 'weight' must be a positive number, got {weight!r}")
    kind = d.get("kind", "auto")
    if kind not in KINDS:
        raise RecipeError(f"{at}: 'kind' must be one of {KINDS}, got {kind!r}")
    max_tiles = d.get("max_tiles")
    if max_tiles is not None and (isinstance(max_tiles, bool) or not isinstance(max_tiles, int) or max_tiles < 1):
        raise RecipeError(f"{at}: 'max_tiles' must be an integer >= 1, got {max_tiles!r}")
    cap = d.get("caption_prompt", DEFAULT_CAPTION_PROMPT)
    sysp = d.get("system_prompt")
    if not isinstance(cap, str) or (sysp is not None and not isinstance(sysp, str)):
        raise RecipeError(f"{at}: 'caption_prompt' and 'system_prompt' must be strings")
    return DatasetSpec(str(name), tuple(resolved), float(weight), kind, max_tiles, cap, sysp)


def parse_recipe(data: object, source: str = "<inline>", data_root: str | Path | None = None,
                 base_dir: str | Path | None = None) -> Recipe:
    """Validate a recipe mapping (as loaded from YAML)."""
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe must be a mapping with a 'datasets' list")
    unknown = set(data) - {"name", "description", "defaults", "datasets"}
    if unknown:
        raise RecipeError(f"{source}: unknown top-level keys {sorted(unknown)}")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict) or set(defaults) - OPTION_KEYS:
        raise RecipeError(f"{source}: 'defaults' may only set {sorted(OPTION_KEYS)}")
    entries = data.get("datasets")
    if not isinstance(entries, list) or not entries:
        raise RecipeError(f"{source}: 'datasets' must be a non-empty list")
    root = Path(data_root).absolute() if data_root is not None else None  # ${DATA_ROOT} paths are not re-based
    variables = {"DATA_ROOT": str(root)} if root is not None else {}
    base = root if root is not None else Path(base_dir or ".")
    specs = tuple(_dataset(e, i, defaults, source, base, variables) for i, e in enumerate(entries))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise RecipeError(f"{source}: dataset names must be unique, got {names}")
    return Recipe(str(data.get("name", Path(source).stem)), specs, source, str(data.get("description", "")))


def load_recipe(recipe: str | Path, data_root: str | Path | None = None) -> Recipe:
    """Load a recipe by file path or by name (a file in ``recipes_dir()``)."""
    path = Path(recipe)
    if not path.is_file():
        named = recipes_dir() / f"{recipe}.yaml"
        if not named.is_file():
            raise RecipeError(f"recipe {recipe!r} is neither a file nor a named recipe; "
                              f"available: {available_recipes()}")
        path = named
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: invalid YAML: {e}") from None
    return parse_recipe(data, str(path), data_root, base_dir=path.parent)


def recipe_from_paths(paths: list[str], **options) -> Recipe:
    """A one-dataset recipe over the given shards (for tools and tests)."""
    return parse_recipe({"datasets": [{"name": "shards", "paths": list(paths), **options}]}, "<paths>")
