"""The one setup/teardown of a distributed process: CPU runtime, process groups, megatron state.

Every entry point that builds megatron modules (training, conversion, inference, summaries,
benchmarks) runs inside ``distributed_session``; nothing else initialises or destroys them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from nvlm_train.config.parallel import ParallelConfig
from nvlm_train.runtime.compat import shutdown_checkpoint_writers
from nvlm_train.runtime.cpu_runtime import cpu_runtime, maybe_cpu_runtime
from nvlm_train.runtime.initialize import destroy_distributed, initialize_distributed
from nvlm_train.runtime.launch_env import LaunchEnv


@contextlib.contextmanager
def distributed_session(parallel: ParallelConfig | None = None, *, seed: int = 1234, env: LaunchEnv | None = None,
                        num_language_layers: int | None = None, force_cpu: bool = False) -> Iterator[bool]:
    """Initialise this rank (CPU runtime when there is no CUDA, or ``force_cpu``), yield whether on
    CPU, and always tear down: checkpoint writer helpers, megatron's groups, the process group.

    ``env``: where this rank sits (default: torchrun's/SLURM's environment, else a world of one).
    """
    runtime = cpu_runtime() if force_cpu else maybe_cpu_runtime()
    with runtime as on_cpu:
        try:
            initialize_distributed(parallel or ParallelConfig(), seed=seed, num_language_layers=num_language_layers,
                                   env=env)
            yield True if force_cpu else on_cpu
        finally:
            shutdown_checkpoint_writers()
            destroy_distributed()
