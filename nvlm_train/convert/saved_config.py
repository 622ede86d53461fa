"""The run config saved inside a checkpoint, read without megatron: the model and the tokenizer used."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from nvlm_train.config.model import ModelConfig
from nvlm_train.convert.errors import ConvertError


def _fill(cls, values: dict):
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value = values[f.name]
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if sub is not None and dataclasses.is_dataclass(sub) and isinstance(value, dict):
            value = _fill(sub, value)
        kwargs[f.name] = value
    return cls(**kwargs)


def model_from_dict(section: dict) -> ModelConfig:
    model = _fill(ModelConfig, section)
    model.validate()
    return model


def parse_saved_config(text: str, folder: Path) -> tuple[ModelConfig, dict]:
    """(ModelConfig, whole config dict) of a checkpoint's saved YAML; fails when there is no ``model:``."""
    cfg = yaml.safe_load(text or "") or {}
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict) or not cfg["model"]:
        raise ConvertError(f"checkpoint {folder} has no saved run config with a model: section; "
                           "it was not written by nvlm-train or nvlm-convert")
    return model_from_dict(cfg["model"]), cfg


def saved_tokenizer_dir(cfg: dict) -> Path | None:
    tok = (cfg.get("data") or {}).get("tokenizer_dir")
    return Path(tok) if tok else None
