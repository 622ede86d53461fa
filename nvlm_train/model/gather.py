"""Reassemble full, unpadded tensors (parameters or gradients) from all TP and PP ranks.

Used by layout-parity tests and by exporters; memory is the full model on the receiving rank,
so it is meant for small models and for one parameter at a time in streaming exporters.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from nvlm_train.config.model import ModelConfig
from nvlm_train.model.builder import BuiltModel
from nvlm_train.model.layout import global_name, param_layout


def _local_tensor(param: torch.nn.Parameter, what: str) -> torch.Tensor | None:
    if what == "param":
        return param.detach()
    grad = getattr(param, "main_grad", None)
    if grad is None:
        grad = param.grad
    return None if grad is None else grad.detach()


def gather_full(built: BuiltModel, model: ModelConfig, what: str = "param") -> dict[str, torch.Tensor]:
    """Full tensors by global name, identical on every rank (collective over TP and PP)."""
    tp_group = parallel_state.get_tensor_model_parallel_group()
    tp = parallel_state.get_tensor_model_parallel_world_size()
    stage: dict[str, torch.Tensor] = {}
    for chunk in built.chunks:
        for local, param in chunk.named_parameters():
            name = global_name(local, chunk)
            tensor = _local_tensor(param, what)
            if tensor is None:
                tensor = torch.zeros_like(param)
            layout = param_layout(name, param, model, tp, built.padded_vocab, built.padded_vision_heads)
            if layout.tp_dim is not None and tp > 1:
                shards = [torch.empty_like(tensor) for _ in range(tp)]
                dist.all_gather(shards, tensor.contiguous(), group=tp_group)
            else:
                shards = [tensor]
            stage[name] = layout.unshard([s.cpu() for s in shards]).clone()
    pp_group = parallel_state.get_pipeline_model_parallel_group()
    if parallel_state.get_pipeline_model_parallel_world_size() == 1:
        return stage
    parts: list = [None] * parallel_state.get_pipeline_model_parallel_world_size()
    dist.all_gather_object(parts, stage, group=pp_group)
    merged: dict[str, torch.Tensor] = {}
    for part in parts:
        merged.update(part)
    return merged
