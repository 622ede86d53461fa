"""Bring up torch.distributed and megatron-core's parallel state for one process."""

from __future__ import annotations

import datetime

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

from nvlm_train.config.parallel import ParallelConfig
from nvlm_train.runtime.launch_env import LaunchEnv, free_port, read_launch_env


def initialize_distributed(
    parallel: ParallelConfig,
    *,
    seed: int = 1234,
    num_language_layers: int | None = None,
    env: LaunchEnv | None = None,
    timeout_s: float = 600.0,
) -> LaunchEnv:
    """Init the process group (NCCL on GPU, gloo on CPU) and megatron's TP/PP/DP groups.

    Validates the layout before any communication so a wrong launch fails with a message
    instead of a hang. Call inside ``maybe_cpu_runtime()`` on machines without CUDA.
    """
    env = env or read_launch_env()
    parallel.validate(env.world_size, num_language_layers)
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
    if not dist.is_initialized():
        port = env.master_port or free_port()
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            init_method=f"tcp://{env.master_addr}:{port}",
            rank=env.rank,
            world_size=env.world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tp,
        pipeline_model_parallel_size=parallel.pp,
        virtual_pipeline_model_parallel_size=parallel.vpp if (parallel.vpp or 1) > 1 else None,
    )
    model_parallel_cuda_manual_seed(seed)
    return env


def current_parallel(sequence_parallel: bool = False) -> ParallelConfig:
    """The layout this process was initialised with (megatron's parallel state), as a ParallelConfig.

    For tools that run a checkpoint at whatever TP/PP they are launched with (inference, verify).
    """
    vpp = parallel_state.get_virtual_pipeline_model_parallel_world_size()
    return ParallelConfig(tp=parallel_state.get_tensor_model_parallel_world_size(),
                          pp=parallel_state.get_pipeline_model_parallel_world_size(),
                          vpp=vpp if vpp and vpp > 1 else None, sequence_parallel=sequence_parallel)


def destroy_distributed() -> None:
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
