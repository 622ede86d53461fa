"""Every closed set of choices a config offers, as a ``StrEnum`` (one home per choice).

Hydra types the fields by these enums, so ``model.impl=flash`` fails at composition naming the
allowed values; code compares members (a member also equals its string, as in saved YAML).
``check_choice`` validates a value set in Python (dataclasses built by hand) with the same message.
"""

from __future__ import annotations

import dataclasses
from enum import StrEnum

from nvlm_train.config.errors import ConfigError

# Member names are the YAML spellings (Hydra matches a string to a member by name).


class Impl(StrEnum):
    """Layer implementation: auto = Transformer Engine where it can run this job, else torch."""

    auto = "auto"
    torch = "torch"
    transformer_engine = "transformer_engine"


class Recompute(StrEnum):
    """Activation recomputation of a tower (null: off)."""

    full = "full"
    selective = "selective"


class RopeScaling(StrEnum):
    """HF ``rope_scaling`` types our RoPE implements (dynamic NTK is the identity up to max positions)."""

    dynamic = "dynamic"


class PrecisionMode(StrEnum):
    """``train.precision``: auto = bf16 on GPU, fp32 on CPU."""

    auto = "auto"
    bf16 = "bf16"
    fp32 = "fp32"


class DecayStyle(StrEnum):
    cosine = "cosine"
    linear = "linear"
    constant = "constant"


class WandbMode(StrEnum):
    """offline (default; ``wandb sync`` later), online, or disabled."""

    offline = "offline"
    online = "online"
    disabled = "disabled"


def _spell(values: list[str]) -> str:
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " or " + values[-1]


def check_choice(enum: type[StrEnum], value, key: str, optional: bool = False):
    """``value`` as a member of ``enum`` (None kept when ``optional``); ConfigError naming the choices."""
    if value is None and optional:
        return None
    try:
        return enum(value)
    except ValueError:
        names = (["null"] if optional else []) + [m.value for m in enum]
        raise ConfigError(f"{key}={value!r}: use {_spell(names)}") from None


def to_plain(value):
    """A config (dataclass, dict, list) with enum members turned into their strings (for YAML/JSON)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    return str(value) if isinstance(value, StrEnum) else value
