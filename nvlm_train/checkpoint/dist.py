"""Distributed checkpoints (megatron-core ``dist_checkpointing``) with exact resume.

Folders and tracker: ``nvlm_train.checkpoint.layout``.

A checkpoint holds the model chunks, the optimizer, the LR schedule, every rank's RNG states,
every data-parallel rank's loader position, the iteration and the resolved config. Tensors are
saved with their global (full-model) coordinates, so loading at another TP/PP reshards.

Safety: a save is written to ``iter_N.tmp``, renamed to ``iter_N`` only once complete, and the
tracker file is replaced atomically afterwards. A crash or kill mid-save leaves the previous
checkpoint and tracker untouched; stale ``*.tmp`` folders are removed by the next save.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject

from nvlm_train.checkpoint.layout import TRACKER, iteration_dir
from nvlm_train.runtime.compat import use_in_process_results_queue


# -- RNG -----------------------------------------------------------------------------------------------
def _rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _per_rank_object(key: str, obj, dp_replica: bool) -> ShardedObject:
    """One object per (pp, tp) rank, replicated over DP; or one per DP rank, replicated over TP/PP."""
    pp, tp = parallel_state.get_pipeline_model_parallel_rank(), parallel_state.get_tensor_model_parallel_rank()
    pp_n = parallel_state.get_pipeline_model_parallel_world_size()
    tp_n = parallel_state.get_tensor_model_parallel_world_size()
    dp, dp_n = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
    if dp_replica:
        return ShardedObject(key, obj, (pp_n, tp_n, dp_n), (pp, tp, dp), replica_id=0)
    return ShardedObject(key, obj, (dp_n,), (dp,), replica_id=pp * tp_n + tp)


# -- state dicts ----------------------------------------------------------------------------------------
@dataclass
class TrainingState:
    iteration: int = 0
    consumed_samples: int = 0
    skipped_steps: int = 0


def _unwrap(chunk):
    """The model inside a DDP wrapper (checkpoint keys never carry the wrapper's prefix)."""
    return getattr(chunk, "module", chunk)


def _model_key(i: int, n: int) -> str:
    return "model" if n == 1 else f"model{i}"


def _layout() -> list[int]:
    return [parallel_state.get_pipeline_model_parallel_world_size(),
            parallel_state.get_tensor_model_parallel_world_size(),
            parallel_state.get_data_parallel_world_size()]


def _sharded_state(chunks, optimizer, scheduler, loader_state, state: TrainingState, config_yaml: str,
                   is_loading: bool, weights_only: bool = False, rng: bool = True, data: bool = True) -> dict:
    sd: dict = {}
    for i, chunk in enumerate(chunks):
        sd[_model_key(i, len(chunks))] = _unwrap(chunk).sharded_state_dict()
    if weights_only:
        return sd
    model_sd = {k: v for k, v in sd.items() if k.startswith("model")}
    if optimizer is not None:
        # "fully_reshardable": the distributed optimizer's state is stored per parameter in model space,
        # so it loads at any TP/PP/DP (plain optimizers ignore the key).
        sd["optimizer"] = optimizer.sharded_state_dict(
            model_sd, is_loading=is_loading, metadata={"distrib_optim_sharding_type": "fully_reshardable"})
    if rng:
        sd["rng"] = _per_rank_object("rng_state", _rng_state(), dp_replica=True)
    if data:
        sd["data"] = _per_rank_object("data_state", loader_state, dp_replica=False)
    sd["scheduler"] = scheduler.state_dict() if scheduler is not None else None
    sd["train_state"] = vars(state).copy()
    sd["config"] = config_yaml
    sd["layout"] = _layout()  # [pp, tp, dp] of the saving run
    return sd


def save_checkpoint(root: Path, chunks, optimizer, scheduler, loader_state: dict, state: TrainingState,
                    config_yaml: str, keep_last: int, sharded_strategy=None) -> Path:
    """Collective. Write ``iter_<state.iteration>`` beside the others, publish it, prune old ones.

    ``sharded_strategy``: a megatron save strategy for the tensors (default: megatron's torch_dist).
    """
    root = Path(root)
    final = iteration_dir(root, state.iteration)
    tmp = final.with_name(final.name + ".tmp")
    if dist.get_rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob("iter_*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    dist.barrier()
    sd = _sharded_state(chunks, optimizer, scheduler, loader_state, state, config_yaml, is_loading=False)
    use_in_process_results_queue()  # no Manager process for a signal to the job to kill
    dist_checkpointing.save(sd, str(tmp), sharded_strategy=sharded_strategy)
    dist.barrier()
    _publish(root, tmp, final, state.iteration, keep_last)
    dist.barrier()
    return final


def _publish(root: Path, tmp: Path, final: Path, iteration: int, keep_last: int) -> None:
    """Rank 0: rename the complete save into place, then point the tracker at it atomically."""
    if dist.get_rank() != 0:
        return
    if final.exists():  # re-saving the same iteration (e.g. SIGTERM right after a periodic save)
        shutil.rmtree(final)
    os.replace(tmp, final)
    tracker_tmp = root / (TRACKER + ".tmp")
    tracker_tmp.write_text(f"{iteration}\n")
    os.replace(tracker_tmp, root / TRACKER)
    _prune(root, keep_last)


def _prune(root: Path, keep_last: int) -> None:
    done = sorted(p for p in root.glob("iter_*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in done[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(folder: Path, chunks, optimizer=None, scheduler=None, weights_only: bool = False
                    ) -> tuple[TrainingState, dict | None]:
    """Collective. Restore into the given objects.

    Returns (training state, this DP rank's loader state); the loader state is None when the
    checkpoint was saved at another data-parallel size (its positions cannot be mapped).
    """
    folder = Path(folder)
    # Tensors are matched by their global keys, not by the container names, so the chunk layout
    # (PP, VPP) of the saving run does not matter. Per-rank objects only map onto the same layout:
    # RNG streams are kept only at the same PP x TP x DP, the data position at the same DP size.
    saved = dist_checkpointing.load_common_state_dict(str(folder)).get("layout")
    now = _layout()
    same_ranks = saved == now
    same_dp = saved is not None and saved[2] == now[2]
    if not weights_only and not same_ranks and dist.get_rank() == 0:
        print(f"checkpoint layout PPxTPxDP={saved} differs from this run's {now}: model and optimizer are "
              f"resharded; RNG streams are re-seeded", flush=True)
    sd = _sharded_state(chunks, optimizer, scheduler, {}, TrainingState(), "", is_loading=True,
                        weights_only=weights_only, rng=same_ranks, data=same_dp)
    loaded = dist_checkpointing.load(sd, str(folder))
    for i, chunk in enumerate(chunks):
        _unwrap(chunk).load_state_dict(loaded[_model_key(i, len(chunks))], strict=True)
    if weights_only:
        return TrainingState(), None
    if optimizer is not None:
        optimizer.load_state_dict(loaded["optimizer"])
    if scheduler is not None and loaded.get("scheduler") is not None:
        scheduler.load_state_dict(loaded["scheduler"])
    if same_ranks:
        _set_rng_state(loaded["rng"])
    state = TrainingState(**loaded["train_state"])
    return state, (loaded["data"] if same_dp else None)

