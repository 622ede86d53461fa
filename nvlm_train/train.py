"""``nvlm-train`` / ``python -m nvlm_train.train``: the Hydra training app over ``configs/``.

Run it under torchrun or srun (or alone for one process)::

    torchrun --nproc-per-node 2 -m nvlm_train.train experiment=demo parallel.tp=2
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from nvlm_train.config.store import register_configs

register_configs()


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> int:
    from nvlm_train.training.loop import run_training

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        # A sweep's jobs must not share a run directory (each would resume the others' checkpoints).
        cfg.run.dir = hydra_cfg.runtime.output_dir
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    train_cfg = OmegaConf.to_object(cfg)  # -> TrainConfig (typed, validated by the schema)
    code = run_training(train_cfg, config_yaml)
    if code:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
