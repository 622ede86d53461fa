"""Hydra wiring: typed schemas in the ConfigStore, composition of ``configs/``, conversion to dataclasses.

Every YAML under ``configs/`` is merged onto a dataclass schema, so a misspelt or mistyped key
fails at composition time with Hydra's message naming the key. Code below the entry points only
sees the dataclasses returned here, never a DictConfig.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from nvlm_train.config.model import ModelConfig
from nvlm_train.config.overrides import check_overrides
from nvlm_train.config.train import TrainConfig
from nvlm_train.resources import resource_dir


def config_dir() -> Path:
    """``configs/`` of this installation (``nvlm_train.resources``; override with NVLM_CONFIG_DIR).

    An absolute path: Hydra resolves a relative ``config_path`` against the package when the app runs
    as the ``nvlm-train`` console script, not as a file.
    """
    return resource_dir("configs")


def config_groups() -> frozenset[str]:
    """Names of the config groups under ``configs/`` (``model``, ``data``, ...), for override checks."""
    return frozenset(p.name for p in config_dir().iterdir() if p.is_dir())


@dataclass
class SummaryConfig:
    model: ModelConfig = field(default_factory=ModelConfig)


_registered = False


def register_configs() -> None:
    global _registered
    if _registered:
        return
    cs = ConfigStore.instance()
    cs.store(name="summary_schema", node=SummaryConfig)
    # Only the primary configs get schemas: they type every section, so the group files (model/,
    # data/, ...) merge onto typed nodes without schemas of their own, which Hydra would otherwise
    # list as choices of the group (``data=data_schema``).
    cs.store(name="train_schema", node=TrainConfig)
    _registered = True


def compose_config(config_name: str, overrides: list[str] | None = None):
    """Compose ``configs/<config_name>.yaml`` with Hydra overrides (no working-dir change)."""
    register_configs()
    check_overrides(list(overrides or []), SummaryConfig if config_name == "summary" else TrainConfig,
                    config_groups())
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides or []))


def to_dataclass(node):
    return OmegaConf.to_object(node)


def load_model_config(name: str, overrides: list[str] | None = None) -> ModelConfig:
    """``configs/model/<name>.yaml`` (plus ``model.*`` overrides) as a validated ModelConfig."""
    cfg = compose_config("summary", [f"model={name}", *(overrides or [])])
    model = to_dataclass(cfg.model)
    model.validate()
    return model
