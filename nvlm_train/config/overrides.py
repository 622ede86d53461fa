"""Command-line overrides checked against the typed schema before Hydra composes anything.

Hydra refuses ``train.itres=3`` but suggests ``+train.itres=3``, which it then accepts: the run
trains with the default ``train.iters`` and an unused ``itres`` key. Every section of the trainer's
config is a dataclass, so a key the dataclass lacks is always a typo, with ``+``/``++`` or without.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing

from nvlm_train.config.errors import ConfigError


def _fields(cls) -> dict[str, type | None]:
    """Field name -> its dataclass type (None for leaf values)."""
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name] if dataclasses.is_dataclass(hints[f.name]) else None)
            for f in dataclasses.fields(cls)}


def _leaf_paths(cls, prefix: str = "") -> list[str]:
    paths = []
    for name, sub in _fields(cls).items():
        paths.extend(_leaf_paths(sub, f"{prefix}{name}.") if sub else [f"{prefix}{name}"])
    return paths


def _key_of(arg: str) -> str | None:
    """The dotted key of a ``[+|++]key=value`` override; None for flags, deletions and group paths."""
    if arg.startswith(("-", "~")) or "=" not in arg:
        return None
    key = arg.split("=", 1)[0].lstrip("+")
    if "/" in key or "@" in key or key.startswith("hydra.") or key == "hydra":
        return None
    return key


def unknown_key_message(key: str, schema, groups: frozenset[str]) -> str | None:
    """Why ``key`` is not in ``schema`` (a dataclass) with a suggestion, or None if it is known."""
    parts = key.split(".")
    if len(parts) == 1 and parts[0] in groups:
        return None  # a config group choice, e.g. data=custom
    cls, done = schema, []
    for part in parts:
        fields = _fields(cls) if cls else {}
        if part not in fields:
            where = ".".join(done)
            msg = f"unknown config key '{key}' (refused with or without '+')"
            if not cls:
                return f"{msg}: '{where}' is a value, not a section"
            guess = difflib.get_close_matches(part, list(fields), n=1, cutoff=0.6)
            if guess:
                return f"{msg}; did you mean '{'.'.join([*done, guess[0]])}'?"
            same_leaf = [p for p in _leaf_paths(schema) if p.rsplit(".", 1)[-1] == part]
            if same_leaf:
                return f"{msg}; did you mean '{same_leaf[0]}'?"
            return f"{msg}; keys of {where or 'the config'}: {', '.join(fields)}"
        cls = fields[part]
        done.append(part)
    return None


def check_overrides(args: list[str], schema, groups: frozenset[str] = frozenset()) -> None:
    """Raise ConfigError for the first override whose key the schema does not have."""
    for arg in args:
        key = _key_of(arg)
        if key is None:
            continue
        msg = unknown_key_message(key, schema, groups)
        if msg:
            raise ConfigError(msg)
