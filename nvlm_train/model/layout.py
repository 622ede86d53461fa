"""How each local parameter shard relates to its full, layout-independent tensor.

The "full" tensor of a parameter is what a TP1/PP1 run holds, without padding (no zero vision
heads, no vocabulary padding), under its global name (layer indices counted over the whole
tower, not the pipeline stage). ``shard`` cuts a full tensor into this rank's piece and
``unshard`` reassembles full tensors from all TP pieces. Initialisation, layout-parity tests
and checkpoint conversion all go through these two functions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from nvlm_train.config.model import ModelConfig

_LAYER_RE = re.compile(r"(decoder\.layers\.)(\d+)(\.)")


@dataclass(frozen=True)
class ParamLayout:
    tp_dim: int | None  # None: replicated over TP
    gated: bool = False  # SwiGLU fc1: [gate; up] halves are sharded separately
    head_block: int = 0  # rows/cols per head along tp_dim (vision head padding)
    real_heads: int = 0
    padded_heads: int = 0
    real_rows: int = 0  # vocabulary: real rows along tp_dim (padded rows stripped)
    padded_rows: int = 0

    def pad(self, full: torch.Tensor) -> torch.Tensor:
        if self.padded_heads > self.real_heads:
            extra = list(full.shape)
            extra[self.tp_dim] = (self.padded_heads - self.real_heads) * self.head_block
            return torch.cat([full, full.new_zeros(extra)], dim=self.tp_dim)
        if self.padded_rows > self.real_rows:
            extra = list(full.shape)
            extra[self.tp_dim] = self.padded_rows - self.real_rows
            return torch.cat([full, full.new_zeros(extra)], dim=self.tp_dim)
        return full

    def unpad(self, padded: torch.Tensor) -> torch.Tensor:
        if self.padded_heads > self.real_heads:
            return padded.narrow(self.tp_dim, 0, self.real_heads * self.head_block)
        if self.padded_rows > self.real_rows:
            return padded.narrow(self.tp_dim, 0, self.real_rows)
        return padded

    def shard(self, full: torch.Tensor, rank: int, size: int) -> torch.Tensor:
        padded = self.pad(full)
        if self.tp_dim is None or size == 1:
            return padded.clone()
        if self.gated:
            halves = padded.chunk(2, dim=self.tp_dim)
            return torch.cat([h.chunk(size, dim=self.tp_dim)[rank] for h in halves], dim=self.tp_dim)
        return padded.chunk(size, dim=self.tp_dim)[rank].clone()

    def unshard(self, shards: list[torch.Tensor]) -> torch.Tensor:
        if self.tp_dim is None or len(shards) == 1:
            return self.unpad(shards[0])
        if self.gated:
            gates, ups = zip(*(s.chunk(2, dim=self.tp_dim) for s in shards))
            padded = torch.cat([*gates, *ups], dim=self.tp_dim)
        else:
            padded = torch.cat(shards, dim=self.tp_dim)
        return self.unpad(padded)


def global_name(local_name: str, module: torch.nn.Module) -> str:
    """Rename ``...decoder.layers.<local>.`` to the layer's global index (PP/VPP offset)."""
    match = _LAYER_RE.search(local_name)
    if not match:
        return local_name
    tower = local_name[: match.start()] + "decoder"
    block = module.get_submodule(tower)
    layer = block.layers[int(match.group(2))]
    return f"{local_name[:match.start()]}{match.group(1)}{layer.layer_number - 1}{match.group(3)}" + \
        local_name[match.end():]


def param_layout(name: str, param: torch.Tensor, model: ModelConfig, tp: int, padded_vocab: int,
                 padded_vision_heads: int) -> ParamLayout:
    """Layout of one parameter, from megatron's TP attributes plus NVLM-D's special cases."""
    if not getattr(param, "tensor_model_parallel", False):
        return ParamLayout(tp_dim=None)
    dim = int(param.partition_dim)
    if name.startswith("language_model.") and name.endswith("mlp.linear_fc1.weight"):
        return ParamLayout(tp_dim=dim, gated=True)
    if name.endswith(("embedding.word_embeddings.weight", "output_layer.weight")):
        return ParamLayout(tp_dim=dim, real_rows=model.language.vocab_size, padded_rows=padded_vocab)
    if name.startswith("vision_model.") and ".self_attention." in name:
        hn = model.vision.head_dim
        block = 3 * hn if "linear_qkv" in name else hn
        return ParamLayout(tp_dim=dim, head_block=block, real_heads=model.vision.num_attention_heads,
                           padded_heads=padded_vision_heads)
    return ParamLayout(tp_dim=dim)


def full_shape(layout: ParamLayout, local_shape: torch.Size, tp: int) -> tuple[int, ...]:
    """Unpadded full shape of a parameter from its local shard shape."""
    shape = list(local_shape)
    if layout.tp_dim is None:
        return tuple(shape)
    shape[layout.tp_dim] *= tp
    if layout.padded_heads:
        shape[layout.tp_dim] = layout.real_heads * layout.head_block
    if layout.padded_rows:
        shape[layout.tp_dim] = layout.real_rows
    return tuple(shape)
