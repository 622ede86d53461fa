"""megatron-core DDP wrappers, optimizer (Adam, optional distributed) and LR schedule."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import ChainedOptimizer, OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from nvlm_train.config.errors import ConfigError
from nvlm_train.config.train import TrainConfig


def ddp_config(cfg: TrainConfig, on_gpu: bool) -> DistributedDataParallelConfig:
    """What megatron's DDP is asked to do: overlap (``parallel.overlap_*``), buckets, fp32 reduction."""
    p = cfg.parallel
    if p.overlap_param_gather and not cfg.optimizer.use_distributed_optimizer:
        raise ConfigError("parallel.overlap_param_gather=true needs optimizer.use_distributed_optimizer=true (only "
                          "the distributed optimizer gathers parameters after its step)")
    return DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=on_gpu if p.overlap_grad_reduce is None else p.overlap_grad_reduce,
        overlap_param_gather=p.overlap_param_gather,
        use_distributed_optimizer=cfg.optimizer.use_distributed_optimizer,
        bucket_size=None if on_gpu else 10**9,
    )


def wrap_ddp(chunks, cfg: TrainConfig, on_gpu: bool) -> list[DistributedDataParallel]:
    """Gradient buffers for the trainable parameters only (frozen towers get none)."""
    config = ddp_config(cfg, on_gpu)
    wrapped = []
    for i, chunk in enumerate(chunks):
        wrapped.append(
            DistributedDataParallel(
                config=chunk.config, ddp_config=config, module=chunk,
                # Only the first chunk buckets; later chunks' grads are ready first in the backward.
                disable_bucketing=i > 0,
            )
        )
    return wrapped


def build_optimizer(ddp_chunks, cfg: TrainConfig, bf16: bool):
    o = cfg.optimizer
    opt_cfg = OptimizerConfig(
        optimizer="adam",
        lr=o.lr,
        min_lr=o.min_lr,
        weight_decay=o.weight_decay,
        adam_beta1=o.adam_beta1,
        adam_beta2=o.adam_beta2,
        adam_eps=o.adam_eps,
        clip_grad=o.clip_grad,
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_distributed_optimizer=o.use_distributed_optimizer,
        overlap_param_gather=cfg.parallel.overlap_param_gather,
    )
    optimizer = get_megatron_optimizer(opt_cfg, ddp_chunks)
    decay_iters = max(1, cfg.train.iters - o.warmup_iters) + o.warmup_iters
    scheduler = OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if o.warmup_iters else o.lr,
        max_lr=o.lr,
        min_lr=o.min_lr if o.decay_style != "constant" else o.lr,
        lr_warmup_steps=o.warmup_iters,
        lr_decay_steps=decay_iters,
        lr_decay_style=str(o.decay_style),  # a plain str: it is saved in the checkpoint's common.pt
        start_wd=o.weight_decay,
        end_wd=o.weight_decay,
        wd_incr_steps=decay_iters,
        wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=True,
        override_opt_param_scheduler=False,
    )
    return optimizer, scheduler


@contextlib.contextmanager
def params_in_sync(ddp_chunks) -> Iterator[None]:
    """Model parameters that hold the last optimizer step, for a save, an evaluation or a benchmark.

    With ``overlap_param_gather`` the distributed optimizer's updated shards are all-gathered lazily
    by forward pre-hooks of the next step; megatron's ``disable_forward_pre_hook`` finishes that
    gather now, and the hooks come back for the next training step.
    """
    hooked = [c for c in ddp_chunks if getattr(c, "use_forward_hook", False)]
    for chunk in hooked:
        chunk.disable_forward_pre_hook(param_sync=True)
    try:
        yield
    finally:
        for chunk in hooked:
            chunk.enable_forward_pre_hook()


def configure_schedule_hooks(ddp_chunks, optimizer) -> None:
    """What megatron's pipeline schedules call around forward/backward: grad sync and scaling."""
    config = ddp_chunks[0].module.config
    config.finalize_model_grads_func = finalize_model_grads
    config.grad_scale_func = optimizer.scale_loss
    no_sync = [c.no_sync for c in ddp_chunks]
    config.no_sync_func = no_sync[0] if len(no_sync) == 1 else no_sync
    if len(ddp_chunks) > 1:
        config.grad_sync_func = [c.start_grad_sync for c in ddp_chunks]


def step_if_finite(optimizer) -> float | None:
    """Clip and step unless the gradients are non-finite; returns the grad norm, None when skipped.

    megatron's ``step()`` clips by a NaN norm as a no-op and then steps (bf16 and fp32 have no loss
    scaler to catch it), so the norm is computed first, with its one DP/MP reduction and one host
    read, and decides. The clipping is ``ChainedOptimizer.step``'s, with that same norm.
    """
    if optimizer.prepare_grads():  # fp16 loss-scaler overflow
        return None
    grad_norm = float(optimizer.get_grad_norm())
    if not math.isfinite(grad_norm):
        return None
    parts = optimizer.chained_optimizers if isinstance(optimizer, ChainedOptimizer) else [optimizer]
    for part in parts:
        params = [] if getattr(part, "is_stub_optimizer", False) else part.get_parameters()
        if params and part.config.clip_grad > 0.0:
            clip_grad_by_total_norm_fp32(params, max_norm=part.config.clip_grad, total_norm=grad_norm,
                                         use_decoupled_grad=part.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8)
    return grad_norm if optimizer.step_with_ready_grads() else None
