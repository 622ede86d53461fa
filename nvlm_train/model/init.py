"""Initialisation that does not depend on the parallel layout.

Every parameter's full tensor is drawn from a generator seeded by (seed, global name), then
cut to this rank's shard. The same seed therefore gives the same full model at TP1, TP2, PP2,
... which makes layout-parity tests meaningful and lets a project change layout mid-way.
Memory: one full parameter at a time (the largest is the embedding).
"""

from __future__ import annotations

import math
import zlib

import torch
from megatron.core import parallel_state

from nvlm_train.config.model import ModelConfig
from nvlm_train.model.layout import full_shape, global_name, param_layout

_ONES = ("layernorm.weight", "layer_norm.weight")


def _init_value(name: str, shape: tuple[int, ...], model: ModelConfig, gen: torch.Generator) -> torch.Tensor:
    if name.endswith("layer_scale.weight"):
        return torch.full(shape, model.vision.layerscale_init)
    if name.endswith(_ONES):
        return torch.ones(shape)
    if name.endswith(".bias") and "patch_embedding" not in name:
        return torch.zeros(shape)
    std = model.init_std
    if name.endswith(("self_attention.linear_proj.weight", "mlp.linear_fc2.weight")):
        layers = model.vision.num_layers if name.startswith("vision_model.") else model.language.num_layers
        std = std / math.sqrt(2.0 * layers)
    return torch.randn(shape, generator=gen) * std


def initialize_parameters(module: torch.nn.Module, model: ModelConfig, padded_vocab: int,
                          padded_vision_heads: int, seed: int | None = None) -> None:
    """Overwrite every parameter of ``module`` (one model chunk) in place."""
    seed = model.init_seed if seed is None else seed
    tp = parallel_state.get_tensor_model_parallel_world_size()
    rank = parallel_state.get_tensor_model_parallel_rank()
    with torch.no_grad():
        for local, param in module.named_parameters():
            name = global_name(local, module)
            layout = param_layout(name, param, model, tp, padded_vocab, padded_vision_heads)
            gen = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}".encode()))
            full = _init_value(name, full_shape(layout, param.shape, tp), model, gen)
            param.copy_(layout.shard(full, rank, tp).to(param.dtype))
