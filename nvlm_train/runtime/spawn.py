"""Run a function on N ranks spawned on this machine (gloo on CPU, NCCL on GPUs) and collect results.

Each rank gets torchrun's environment variables (RANK, WORLD_SIZE, ...), so code written for a
torchrun launch runs unchanged. With ``parallel`` the rank runs inside ``distributed_session``;
without it, only inside the CPU runtime (when there is no CUDA) and the function initialises
itself. Results and errors travel back through one pickle file per rank.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

from nvlm_train.config.parallel import ParallelConfig
from nvlm_train.runtime.launch_env import LaunchEnv, free_port


class SpawnError(RuntimeError):
    """One or more spawned ranks failed; the message holds each failing rank's error."""


def _rank_main(rank: int, world: int, port: int, out_dir: str, fn: Callable, args: tuple,
               parallel: ParallelConfig | None, brief: tuple[type[BaseException], ...]) -> None:
    import torch

    from nvlm_train.runtime.compat import shutdown_checkpoint_writers
    from nvlm_train.runtime.cpu_runtime import maybe_cpu_runtime
    from nvlm_train.runtime.initialize import destroy_distributed
    from nvlm_train.runtime.session import distributed_session

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    path = Path(out_dir) / f"rank{rank}.pkl"
    if parallel is not None:
        scope = distributed_session(parallel, env=LaunchEnv.local(rank, world, port))
    else:
        scope = maybe_cpu_runtime()
    try:
        with scope:
            try:
                result = fn(*args)
            finally:
                if parallel is None:  # the function set itself up: tear down what it may have left
                    shutdown_checkpoint_writers()
                    destroy_distributed()
        path.write_bytes(pickle.dumps(("ok", result)))
    except BaseException as exc:  # noqa: BLE001 - every failure is reported to the parent
        msg = str(exc) if isinstance(exc, brief) else traceback.format_exc()
        path.write_bytes(pickle.dumps(("error", msg)))
        raise


def run_ranks(fn: Callable, world: int, *args, parallel: ParallelConfig | None = None,
              brief_errors: tuple[type[BaseException], ...] = (), timeout_s: float | None = None) -> list:
    """``fn(*args)`` on ``world`` spawned ranks; the per-rank results in rank order.

    ``brief_errors``: exception types reported by their message alone (user errors), others with
    their traceback. Raises SpawnError naming every failing rank.
    """
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as out_dir:
        ctx = mp.start_processes(_rank_main, args=(world, free_port(), out_dir, fn, args, parallel, brief_errors),
                                 nprocs=world, join=False, start_method="spawn")
        try:
            while not ctx.join(timeout=timeout_s):
                pass
        except Exception as exc:
            errors = []
            for r in range(world):
                p = Path(out_dir) / f"rank{r}.pkl"
                with contextlib.suppress(Exception):
                    status, payload = pickle.loads(p.read_bytes())
                    if status == "error":
                        errors.append(f"rank {r}: {payload}")
            raise SpawnError("\n".join(errors) or str(exc)) from exc
        return [pickle.loads((Path(out_dir) / f"rank{r}.pkl").read_bytes())[1] for r in range(world)]


def run_on_layout(fn: Callable, parallel: ParallelConfig, *args,
                  brief_errors: tuple[type[BaseException], ...] = ()) -> list:
    """``fn(*args)`` at a TP x PP layout: in this process for one rank, else on spawned ranks."""
    from nvlm_train.runtime.session import distributed_session

    world = parallel.tp * parallel.pp
    if world == 1:
        with distributed_session(parallel, env=LaunchEnv.local()):
            return [fn(*args)]
    return run_ranks(fn, world, *args, parallel=parallel, brief_errors=brief_errors)
