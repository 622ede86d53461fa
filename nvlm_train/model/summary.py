"""Parameter counts of a model config, built on the meta device (no memory, no weights)."""

from __future__ import annotations

import torch
from megatron.core import parallel_state

from nvlm_train.config.model import ModelConfig
from nvlm_train.config.parallel import ParallelConfig
from nvlm_train.model.builder import BuiltModel, build_model
from nvlm_train.model.layout import full_shape, global_name, param_layout


def count_parameters(built: BuiltModel, model: ModelConfig) -> dict[str, int]:
    """Unpadded parameter counts per tower on this rank's chunks (vocab and head padding excluded)."""
    tp = parallel_state.get_tensor_model_parallel_world_size()
    counts = {"vision": 0, "projector": 0, "language": 0}
    tower = {"vision_model": "vision", "projector": "projector", "language_model": "language"}
    for chunk in built.chunks:
        for local, param in chunk.named_parameters():
            name = global_name(local, chunk)
            layout = param_layout(name, param, model, tp, built.padded_vocab, built.padded_vision_heads)
            numel = 1
            for d in full_shape(layout, param.shape, tp):
                numel *= d
            if layout.tp_dim is not None and tp > 1:
                numel //= tp  # this rank's share of the full tensor
            counts[tower[name.split(".", 1)[0]]] += numel
    counts["total"] = sum(counts.values())
    return counts


def model_summary(model: ModelConfig) -> dict[str, int]:
    """Counts for the whole model; needs a (single-process) initialised parallel state."""
    with torch.device("meta"):
        built = build_model(model, ParallelConfig(), initialize=False)
    return count_parameters(built, model)
