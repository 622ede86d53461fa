"""Parameter counts of a model config, built on the meta device (no memory, no weights)."""

from __future__ import annotations

import torch
from megatron.core import parallel_state

from nvlm_train.config.model import ModelConfig
from nvlm_train.config.parallel import ParallelConfig
from nvlm_train.hf.configuration_intern_vit import NVLM_D_DUMMY_HEADS
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


def released_layout_extra(model: ModelConfig, dummy_heads: int = NVLM_D_DUMMY_HEADS) -> int:
    """Values the released HF layout stores on top of the parameters: per ViT layer, ``dummy_heads``
    zero heads in each of Q/K/V (rows of qkv), in q_norm and k_norm, and as input columns of proj."""
    v = model.vision
    width = dummy_heads * v.head_dim
    return v.num_layers * width * (3 * v.hidden_size + 2 + v.hidden_size)


def model_summary(model: ModelConfig) -> dict[str, int]:
    """Counts for the whole model, and the values an export in the released layout stores
    (``stored_released_layout``); needs a (single-process) initialised parallel state."""
    with torch.device("meta"):
        built = build_model(model, ParallelConfig(), initialize=False)
    counts = count_parameters(built, model)
    counts["stored_released_layout"] = counts["total"] + released_layout_extra(model)
    return counts
