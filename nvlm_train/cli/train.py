"""``nvlm-train`` / ``python -m nvlm_train.cli.train``: the Hydra training app over ``configs/``.

Run it under torchrun or srun (or alone for one process)::

    torchrun --nproc-per-node 2 -m nvlm_train.cli.train experiment=demo parallel.tp=2
"""

from __future__ import annotations

import sys

from nvlm_train.training.signals import install_process_flag

# First thing: a stop signal that arrives while the rest loads is remembered, not fatal.
install_process_flag()

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from omegaconf.errors import MissingMandatoryValue  # noqa: E402

from nvlm_train.config.errors import ConfigError  # noqa: E402
from nvlm_train.config.overrides import check_overrides  # noqa: E402
from nvlm_train.config.store import config_dir, config_groups, register_configs  # noqa: E402
from nvlm_train.config.train import TrainConfig  # noqa: E402

register_configs()


def _missing_message(exc: MissingMandatoryValue) -> str:
    key = getattr(exc, "full_key", "") or str(exc)
    if key == "data.recipe":
        return ("data.recipe is not set: data=custom needs data.recipe=<a name in data_recipes/ or a YAML path> "
                "(and usually data.data_root=<folder of its shards>)")
    return f"{key} is not set (??? in the config): give {key}=... on the command line"


@hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")
def _train(cfg: DictConfig) -> int:
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        # A sweep's jobs must not share a run directory (each would resume the others' checkpoints).
        cfg.run.dir = hydra_cfg.runtime.output_dir
    try:
        config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
        train_cfg = OmegaConf.to_object(cfg)  # -> TrainConfig (typed, validated by the schema)
    except MissingMandatoryValue as exc:
        print(f"nvlm-train: configuration error: {_missing_message(exc)}", file=sys.stderr)
        sys.exit(2)
    from nvlm_train.training.loop import run_training  # heavy (torch, megatron): after the config checks

    code = run_training(train_cfg, config_yaml)
    if code:
        sys.exit(code)
    return code


def main() -> None:
    """Refuse unknown keys (with a suggestion) before Hydra composes, then run the Hydra app."""
    try:
        check_overrides(sys.argv[1:], TrainConfig, config_groups())
    except ConfigError as exc:
        print(f"nvlm-train: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    _train()


if __name__ == "__main__":
    main()
