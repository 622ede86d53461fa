"""Build the NVLM-D model chunks for this rank: specs, init, freezing."""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from nvlm_train.config.errors import ConfigError
from nvlm_train.config.model import ModelConfig
from nvlm_train.config.parallel import ParallelConfig
from nvlm_train.model.fusions import UNFUSED, Fusions, resolve_fusions
from nvlm_train.model.init import initialize_parameters
from nvlm_train.model.nvlm_d import NVLMDModel
from nvlm_train.model.specs import ImplChoice, resolve_impl
from nvlm_train.model.transformer_config import (
    Precision,
    language_transformer_config,
    padded_vision_heads,
    padded_vocab_size,
    vision_transformer_config,
)


@dataclass(frozen=True)
class BuiltModel:
    chunks: list[NVLMDModel]  # one per virtual pipeline stage (one without VPP)
    impl: str
    padded_vocab: int
    padded_vision_heads: int
    fusions: Fusions
    note: str | None = None  # why model.impl=auto chose these layers, when it was not the obvious choice


def apply_freezing(chunk: NVLMDModel, model: ModelConfig) -> None:
    """Frozen towers: requires_grad False, so they get neither gradients nor optimizer state."""
    groups = {
        "vision": chunk.vision_model,
        "projector": chunk.projector,
        "language": chunk.language_model,
    }
    for key, module in groups.items():
        if module is not None and getattr(model.freeze, key):
            for p in module.parameters():
                p.requires_grad_(False)


def cast_floating_params(chunk: torch.nn.Module, dtype: torch.dtype) -> None:
    """Every floating parameter in ``dtype`` (bf16 runs), as megatron's ``Float16Module`` would do.

    torch's norm layers create fp32 weights whatever ``params_dtype`` says; megatron's mixed-precision
    optimizer then keeps them apart and its checkpoint state no longer lines up with the model's
    parameters ("Optimizer shape ... does not match model shape"), so bf16 runs could not save.
    """
    for p in chunk.parameters():
        if p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)


def check_matches_parallel_state(parallel: ParallelConfig) -> None:
    """The layout the model is built for is the one megatron's process groups were made with.

    ``parallel`` is the one source of TP/PP/VPP for every size the model derives (padding, splits);
    this refuses a config that disagrees with the initialised groups instead of building a model
    whose shards do not fit them.
    """
    ps = parallel_state
    vpp = ps.get_virtual_pipeline_model_parallel_world_size()
    now = (ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size(),
           vpp if vpp and vpp > 1 else None)
    asked = (parallel.tp, parallel.pp, parallel.vpp if (parallel.vpp or 1) > 1 else None)
    if now != asked:
        raise ConfigError(f"the model is built for TP/PP/VPP {asked} but the process groups were initialised with "
                          f"{now}; pass the ParallelConfig the runtime was initialised with (runtime.initialize."
                          f"current_parallel())")


def build_model(model: ModelConfig, parallel: ParallelConfig, precision: Precision | None = None,
                initialize: bool = True, meta: bool = False, packed: bool = True) -> BuiltModel:
    """Model chunks for this rank (parallel state must be initialised).

    ``meta``: parameters on the meta device (shapes and names, no memory; uninitialised), with the
    ``torch`` layers even where CUDA or Transformer Engine is present: for streaming conversion.
    ``packed``: batches may hold several samples per row (data.packing); see ``resolve_impl``.
    """
    model.validate()
    precision = precision or Precision()
    if parallel.sequence_parallel:
        raise ConfigError("parallel.sequence_parallel is not supported yet for NVLM-D; set it to false")
    choice = ImplChoice("torch", llm_thd=True) if meta else resolve_impl(model.impl, packed, precision.bf16)
    impl = choice.impl
    if choice.note and (not dist.is_initialized() or dist.get_rank() == 0):
        print(choice.note, file=sys.stderr, flush=True)
    check_matches_parallel_state(parallel)
    vpp = parallel.vpp if (parallel.vpp or 1) > 1 else None
    vocab = padded_vocab_size(model.language.vocab_size, parallel.tp, model.language.vocab_pad_multiple)
    heads = padded_vision_heads(model, parallel.tp)
    use_cpu_init = meta or not torch.cuda.is_available()
    fusions = UNFUSED if meta else resolve_fusions(model.fusion, impl, thd_rows=choice.llm_thd and packed,
                                                     bf16=precision.bf16)
    vision_cfg = vision_transformer_config(model, parallel, precision, use_cpu_init, fusions)
    lang_cfg = language_transformer_config(model, parallel, precision, use_cpu_init, fusions)
    chunks = []
    for vp_stage in range(vpp or 1):
        stage = vp_stage if vpp else None
        pre = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage)
        post = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage)
        with torch.device("meta") if meta else contextlib.nullcontext():
            chunk = NVLMDModel(model, vision_cfg if pre else None, lang_cfg, impl, vocab, pre, post, stage,
                               llm_thd=choice.llm_thd)
        if torch.cuda.is_available() and not meta:
            chunk.cuda(torch.cuda.current_device())
        if initialize and not meta:
            initialize_parameters(chunk, model, vocab, heads)
        if precision.bf16 and not meta:
            cast_floating_params(chunk, precision.params_dtype)
        apply_freezing(chunk, model)
        chunks.append(chunk)
    return BuiltModel(chunks, impl, vocab, heads, fusions, choice.note)
