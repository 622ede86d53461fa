"""Run a function on N gloo ranks (spawned processes) under the CPU runtime and collect results."""

from __future__ import annotations

import os
import pickle
import socket
import tempfile
import traceback
from pathlib import Path

import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str, fn, args) -> None:
    import torch

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from nvlm_train.parallel.cpu_runtime import cpu_runtime
    from nvlm_train.parallel.initialize import destroy_distributed
    from nvlm_train.training.checkpoint import shutdown_checkpoint_writers

    path = Path(out_dir) / f"rank{rank}.pkl"
    try:
        with cpu_runtime():
            result = fn(rank, world, *args)
        path.write_bytes(pickle.dumps(("ok", result)))
    except BaseException:  # noqa: BLE001 - report every failure to the parent
        path.write_bytes(pickle.dumps(("error", traceback.format_exc())))
        raise
    finally:
        shutdown_checkpoint_writers()
        destroy_distributed()


def run_ranks(fn, world: int, *args, timeout: float = 300.0) -> list:
    """fn(rank, world, *args) on ``world`` processes; returns the per-rank results."""
    with tempfile.TemporaryDirectory() as out_dir:
        ctx = mp.start_processes(_worker, args=(world, _free_port(), out_dir, fn, args), nprocs=world,
                                 join=False, start_method="spawn")
        try:
            while not ctx.join(timeout=timeout):
                pass
        except Exception as exc:
            errors = []
            for r in range(world):
                p = Path(out_dir) / f"rank{r}.pkl"
                if p.exists():
                    status, payload = pickle.loads(p.read_bytes())
                    if status == "error":
                        errors.append(f"rank {r}:\n{payload}")
            raise AssertionError("\n".join(errors) or str(exc)) from exc
        results = []
        for r in range(world):
            status, payload = pickle.loads((Path(out_dir) / f"rank{r}.pkl").read_bytes())
            assert status == "ok", payload
            results.append(payload)
        return results
