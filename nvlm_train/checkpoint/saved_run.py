"""The run config a checkpoint was saved with, read once, without megatron or any tensor.

Every tool that opens a checkpoint (the trainer on resume, conversion, inference, the demo) asks
``SavedRun`` for the model config, the tokenizer, the prompt preset and the tiling it trained with.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from omegaconf import OmegaConf

from nvlm_train.checkpoint.layout import CheckpointError, resolve_checkpoint
from nvlm_train.config.model import ModelConfig, architecture_diffs
from nvlm_train.data.prompt import saved_prompt

# Checkpoints saved before ``data.max_tiles`` was recorded trained with this many tiles.
LEGACY_MAX_TILES = 6


def _known_fields(cls, values: dict) -> dict:
    """``values`` restricted to the fields of dataclass ``cls`` (recursively): a field since removed
    from the schema is ignored, one added since takes its default."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value = values[f.name]
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if sub is not None and dataclasses.is_dataclass(sub) and isinstance(value, dict):
            value = _known_fields(sub, value)
        out[f.name] = value
    return out


def model_from_dict(section: dict) -> ModelConfig:
    """A validated ModelConfig from a saved ``model:`` section (typed by the schema, as Hydra would)."""
    merged = OmegaConf.merge(OmegaConf.structured(ModelConfig), _known_fields(ModelConfig, section))
    model = OmegaConf.to_object(merged)
    model.validate()
    return model


@dataclass(frozen=True)
class SavedRun:
    folder: Path
    iteration: int
    config: dict  # the whole resolved run config (YAML as saved)
    model: ModelConfig

    @classmethod
    def from_folder(cls, path: str | os.PathLike) -> SavedRun:
        """A ``checkpoints/`` folder (its latest iteration) or one ``iter_*`` folder."""
        folder, iteration = resolve_checkpoint(path)
        common = folder / "common.pt"
        state = torch.load(common, map_location="cpu", weights_only=False) if common.is_file() else {}
        return cls.from_yaml(state.get("config", ""), folder, iteration)

    @classmethod
    def from_yaml(cls, text: str, folder: Path, iteration: int = 0) -> SavedRun:
        cfg = yaml.safe_load(text or "") or {}
        if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict) or not cfg["model"]:
            raise CheckpointError(f"checkpoint {folder} has no saved run config with a model: section; "
                                  "it was not written by nvlm-train or nvlm-convert")
        return cls(Path(folder), iteration, cfg, model_from_dict(cfg["model"]))

    @property
    def data(self) -> dict:
        return self.config.get("data") or {}

    @property
    def tokenizer_dir(self) -> Path | None:
        tok = self.data.get("tokenizer_dir")
        return Path(tok) if tok else None

    @property
    def prompt(self) -> tuple[str, str | None]:
        """(prompt format name, system text or None) the run trained with."""
        return saved_prompt(self.data)

    @property
    def max_tiles(self) -> int:
        return int(self.data.get("max_tiles", LEGACY_MAX_TILES))

    def check_architecture(self, current: ModelConfig) -> None:
        """Fail with the differing fields when this checkpoint was made for another architecture."""
        diffs = architecture_diffs(self.model, current, ("checkpoint", "config"))
        if diffs:
            raise CheckpointError("checkpoint architecture does not match the config:\n  " + "\n  ".join(diffs))
