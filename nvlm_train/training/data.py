"""The trainer's view of the data pipeline: loaders derived from the run config, demo data on demand."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from nvlm_train.config.errors import ConfigError
from nvlm_train.config.train import TrainConfig
from nvlm_train.data.loader import DataConfig, MultimodalLoader, build_loader
from nvlm_train.data.prompt import get_prompt_format, resolve_system
from nvlm_train.data.shards import default_cache_dir
from nvlm_train.vision.route import TileRoute


def demo_data_dir(cfg: TrainConfig) -> Path:
    from nvlm_train.data.synth import demo_data_root

    base = Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir()
    return demo_data_root(base, cfg.data.demo_train_samples, cfg.data.demo_heldout_samples, cfg.train.seed)


def ensure_demo_data(cfg: TrainConfig) -> Path:
    """Build the synthetic demo shards once (rank 0 writes, everyone waits). Returns DATA_ROOT."""
    from nvlm_train.data.synth import write_synthetic_shards

    root = demo_data_dir(cfg)
    marker = root / ".complete"
    if dist.get_rank() == 0 and not marker.is_file():
        print(f"building synthetic demo data in {root} ...", file=sys.stderr, flush=True)
        write_synthetic_shards(root, cfg.data.demo_train_samples, cfg.data.demo_heldout_samples,
                               seed=cfg.train.seed)
        marker.write_text("ok\n")
    dist.barrier()
    return root


def tile_route(cfg: TrainConfig) -> TileRoute:
    """``data.tile_on`` resolved for this process (``auto``: on the GPU when training on one)."""
    try:
        return TileRoute.resolve(cfg.data.tile_on, torch.cuda.is_available())
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def data_config(cfg: TrainConfig, recipe: str, data_root: str | None, single_pass: bool = False) -> DataConfig:
    d = cfg.data
    return DataConfig(
        recipe=recipe,
        data_root=data_root,
        tokenizer_dir=d.tokenizer_dir,
        seq_length=cfg.train.seq_length,
        micro_batch_size=cfg.train.micro_batch_size,
        max_tiles=d.max_tiles,
        image_size=cfg.model.vision.image_size,
        tokens_per_tile=cfg.model.tokens_per_tile,
        packing=d.packing,
        num_workers=d.num_workers,
        seed=cfg.train.seed,
        single_pass=single_pass,
        cache_dir=d.cache_dir,
        tile_route=tile_route(cfg),
        max_image_pixels=d.max_image_pixels,
        max_member_bytes=d.max_member_bytes,
        max_skip_fraction=d.max_skip_fraction,
        skip_window=d.skip_window,
        prompt_format=d.prompt_format,
        system=resolve_system(get_prompt_format(d.prompt_format), d.system_prompt),
        pin_memory=torch.cuda.is_available(),
    )


def check_tokenizer_matches_model(loader: MultimodalLoader, cfg: TrainConfig) -> None:
    tok = loader.tokenizer
    lm = cfg.model.language
    if tok.image_context_id != lm.image_token_id:
        raise ConfigError(
            f"the tokenizer's <|vision_pad|> id is {tok.image_context_id} but model.language.image_token_id="
            f"{lm.image_token_id}; set model.language.image_token_id={tok.image_context_id}"
        )
    if tok.vocab_size > lm.vocab_size:
        raise ConfigError(
            f"the tokenizer has {tok.vocab_size} tokens but model.language.vocab_size={lm.vocab_size}; "
            f"raise model.language.vocab_size to at least {tok.vocab_size}"
        )


def train_loader(cfg: TrainConfig, data_root: str | None, dp_rank: int, dp_size: int) -> MultimodalLoader:
    loader = build_loader(data_config(cfg, cfg.data.recipe, data_root), dp_rank, dp_size)
    check_tokenizer_matches_model(loader, cfg)
    return loader


def eval_loader(cfg: TrainConfig, data_root: str | None, dp_rank: int, dp_size: int) -> MultimodalLoader | None:
    """A fresh pass over the held-out recipe: every evaluation sees the same batches."""
    if not cfg.data.eval_recipe:
        return None
    dcfg = dataclasses.replace(data_config(cfg, cfg.data.eval_recipe, data_root, single_pass=True), num_workers=0)
    return build_loader(dcfg, dp_rank, dp_size)
