"""Run megatron code in this process (one rank) or in ``world`` spawned gloo/NCCL ranks.

The converter's import and verify steps build our megatron model; this brings up torch.distributed
and megatron's parallel state for them (with the CPU runtime when there is no GPU) and tears it down.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

from nvlm_train.convert.errors import ConvertError
from nvlm_train.training.checkpoint import shutdown_checkpoint_writers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def megatron_process(tp: int, pp: int, rank: int = 0, world: int = 1, port: int | None = None) -> Iterator[None]:
    """torch.distributed + megatron parallel state for this process, destroyed on exit."""
    from nvlm_train.config.parallel import ParallelConfig
    from nvlm_train.parallel.cpu_runtime import maybe_cpu_runtime
    from nvlm_train.parallel.initialize import destroy_distributed, initialize_distributed
    from nvlm_train.parallel.launch_env import LaunchEnv

    env = LaunchEnv(rank, world, rank, "127.0.0.1", port or free_port(), "single")
    with maybe_cpu_runtime():
        initialize_distributed(ParallelConfig(tp=tp, pp=pp), env=env)
        try:
            yield
        finally:
            shutdown_checkpoint_writers()
            destroy_distributed()


def _rank_main(rank: int, world: int, tp: int, pp: int, port: int, out_dir: str, fn, args) -> None:
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    path = Path(out_dir) / f"rank{rank}.pkl"
    try:
        with megatron_process(tp, pp, rank, world, port):
            result = fn(*args)
        path.write_bytes(pickle.dumps(("ok", result)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        msg = str(exc) if isinstance(exc, ConvertError) else traceback.format_exc()
        path.write_bytes(pickle.dumps(("error", msg)))
        raise


def run_ranks(fn: Callable, tp: int, pp: int, *args) -> list:
    """``fn(*args)`` on tp*pp ranks (spawned when more than one); per-rank results; errors re-raised."""
    world = tp * pp
    if world == 1:
        with megatron_process(tp, pp):
            return [fn(*args)]
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as out_dir:
        try:
            mp.start_processes(_rank_main, args=(world, tp, pp, free_port(), out_dir, fn, args), nprocs=world,
                               join=True, start_method="spawn")
        except Exception as exc:
            errors = []
            for r in range(world):
                p = Path(out_dir) / f"rank{r}.pkl"
                if p.exists():
                    status, payload = pickle.loads(p.read_bytes())
                    if status == "error":
                        errors.append(f"rank {r}: {payload}")
            raise ConvertError("\n".join(errors) or str(exc)) from exc
        return [pickle.loads((Path(out_dir) / f"rank{r}.pkl").read_bytes())[1] for r in range(world)]
