"""Trainer semantics in-process: freezing, the global-batch loss, non-finite steps, wandb offline."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.dist import run_ranks
from tests.model.batches import build_batch
from tests.training.conftest import base_overrides

pytestmark = pytest.mark.multirank


def _trainer(overrides):
    from omegaconf import OmegaConf

    from nvlm_train.config.store import compose_config, to_dataclass
    from nvlm_train.runtime.initialize import initialize_distributed
    from nvlm_train.runtime.launch_env import read_launch_env
    from nvlm_train.training.loop import Trainer

    cfg = compose_config("train", overrides)
    train_cfg = to_dataclass(cfg)
    env = read_launch_env()
    train_cfg.validate(env.world_size)
    initialize_distributed(train_cfg.parallel, seed=train_cfg.train.seed,
                           num_language_layers=train_cfg.model.language.num_layers, env=env)
    return Trainer(train_cfg, OmegaConf.to_yaml(cfg), on_cpu=True)


def freeze_worker(rank, world, overrides):
    trainer = _trainer(overrides)
    named = {n: p for c in trainer.chunks for n, p in c.module.named_parameters()}
    before = {n: p.detach().clone() for n, p in named.items()}
    for _ in range(2):
        step = trainer.train_step()
        assert step["finite"]
    changed = {n for n, p in named.items() if not torch.equal(p, before[n])}
    trainable = {n for n, p in named.items() if p.requires_grad}
    opt_params = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    state_params = {n for n, p in named.items() if id(p) in opt_params}
    n_state = len(trainer.optimizer.optimizer.state) if hasattr(trainer.optimizer, "optimizer") else None
    return {"changed": changed, "trainable": trainable, "state_params": state_params, "n_state": n_state,
            "all": set(named)}


def test_pretrain_stage_trains_only_the_projector(data_cache, tmp_path):
    r = run_ranks(freeze_worker, 1, base_overrides(data_cache, tmp_path) + ["stage=pretrain",
                                                                              "train.seq_length=192"])[0]
    projector = {n for n in r["all"] if n.startswith("projector.")}
    assert r["trainable"] == projector == r["changed"] == r["state_params"]
    assert r["n_state"] == len(projector)  # Adam moments exist for projector params only


def loss_worker(rank, world, dp, num_micro, overrides):
    """One training step on a fixed global batch of 4 rows split over DP ranks and micro-batches."""
    from megatron.core import parallel_state

    trainer = _trainer(overrides)
    cfg = trainer.cfg.model
    rows = [
        [[("text", 5), ("image", 2), ("text", 30)]],
        [[("text", 60)], [("text", 20)]],
        [[("text", 3), ("image", 1), ("text", 10)], [("text", 9), ("image", 3), ("text", 12)]],
        [[("text", 80)]],
    ]
    batch = build_batch(rows, 192, cfg.tokens_per_tile, cfg.language.image_token_id, cfg.language.vocab_size,
                        cfg.vision.image_size, seed=21)
    dp_rank = parallel_state.get_data_parallel_rank()
    per_rank = 4 // dp
    mine = {k: v[dp_rank * per_rank:(dp_rank + 1) * per_rank] if k != "pixel_values" else v
            for k, v in batch.items()}
    # pixel_values must follow this rank's rows: recount tiles per row.
    tiles_per_row = [sum(n for s in r for kind, n in s if kind == "image") for r in rows]
    start = sum(tiles_per_row[:dp_rank * per_rank])
    mine["pixel_values"] = batch["pixel_values"][start:start + sum(tiles_per_row[dp_rank * per_rank:
                                                                                (dp_rank + 1) * per_rank])]
    mbs = per_rank // num_micro
    micro = []
    for m in range(num_micro):
        part = {k: v[m * mbs:(m + 1) * mbs] for k, v in mine.items() if k != "pixel_values"}
        t0 = sum(tiles_per_row[dp_rank * per_rank:dp_rank * per_rank + m * mbs])
        t1 = t0 + sum(tiles_per_row[dp_rank * per_rank + m * mbs:dp_rank * per_rank + (m + 1) * mbs])
        part["pixel_values"] = mine["pixel_values"][t0:t1]  # tile offsets within this rank's rows
        micro.append(part)
    trainer.loader.close()
    trainer.loader = iter(micro)  # feed the hand-made micro-batches
    step = trainer.train_step()
    # The DP-reduced, token-normalised gradient the optimizer stepped with.
    grads = {n: p.main_grad.detach().clone() for c in trainer.chunks for n, p in c.module.named_parameters()}
    return {"loss": step["loss"], "grad_norm": step["grad_norm"], "grads": grads if rank == 0 else None}


def test_loss_is_global_token_mean_whatever_dp_and_micro_batching(data_cache, tmp_path):
    base = base_overrides(data_cache, tmp_path) + ["train.seq_length=192", "optimizer.warmup_iters=0"]
    one = run_ranks(loss_worker, 1, 1, 1, base + ["train.micro_batch_size=4", "train.global_batch_size=4"])[0]
    micro = run_ranks(loss_worker, 1, 1, 4, base + ["train.micro_batch_size=1", "train.global_batch_size=4"])[0]
    dp2 = run_ranks(loss_worker, 2, 2, 2, base + ["train.micro_batch_size=1", "train.global_batch_size=4"])[0]
    for other in (micro, dp2):
        assert abs(other["loss"] - one["loss"]) <= 1e-6 * one["loss"]
        assert abs(other["grad_norm"] - one["grad_norm"]) <= 1e-5 * one["grad_norm"]
        for name, g in one["grads"].items():
            err = (other["grads"][name] - g).norm()
            assert err <= 1e-5 * g.norm() + 1e-12, name


def nonfinite_worker(rank, world, overrides):
    from nvlm_train.training.loop import NonFiniteError

    trainer = _trainer(overrides)
    module = trainer.chunks[0].module
    # A finite loss with one infinite gradient: the step is skipped and no parameter moves.
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    run = trainer._run_schedule

    def one_inf_grad(batches, forward_only):
        reports = run(batches, forward_only)
        next(p for p in module.parameters() if p.requires_grad).main_grad.view(-1)[0] = float("inf")
        return reports

    trainer._run_schedule = one_inf_grad
    grad_step = trainer.train_step()
    trainer._run_schedule = run
    grad_only = {"loss_finite": bool(torch.isfinite(torch.tensor(grad_step["loss"]))), "finite": grad_step["finite"],
                 "unchanged": all(torch.equal(p, before[n]) for n, p in module.named_parameters())}

    proj = module.projector.linear_fc2.weight
    saved = proj.detach().clone()
    with torch.no_grad():
        proj.fill_(float("nan"))
    steps = []
    try:
        for _ in range(3):
            steps.append(trainer.train_step())
        raised = None
    except NonFiniteError as exc:
        raised = str(exc)
    with torch.no_grad():
        proj.copy_(saved)
    ok = trainer.train_step()
    return {"grad_only": grad_only, "finite": [s["finite"] for s in steps], "raised": raised, "after": ok["finite"],
            "skipped": trainer.state.skipped_steps, "lr_steps": trainer.scheduler.num_steps}


def test_nonfinite_steps_are_skipped_then_abort(data_cache, tmp_path):
    r = run_ranks(nonfinite_worker, 1, base_overrides(data_cache, tmp_path) + ["train.max_nonfinite_in_a_row=3"])[0]
    assert r["grad_only"] == {"loss_finite": True, "finite": False, "unchanged": True}
    assert r["finite"] == [False]  # the step after the infinite gradient; the next one is the third in a row
    assert r["raised"] and "3 consecutive steps" in r["raised"]
    assert r["after"] and r["skipped"] == 0 and r["lr_steps"] == 1  # skipped steps did not advance the LR


def test_wandb_offline_run_is_syncable(data_cache, tmp_path):
    from tests.training.conftest import run_train

    run = tmp_path / "wb"
    proc = run_train(1, [o for o in base_overrides(data_cache, run, iters=2) if not o.startswith("run.wandb")]
                     + ["run.wandb_mode=offline"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))
    records = next(offline[0].glob("*.wandb")).read_bytes()
    assert b"loss" in records and b"tokens_per_s" in records  # the logged metric keys
    # `wandb sync` accepts the run directory (dry run: no network here).
    sync = subprocess.run([sys.executable, "-m", "wandb", "sync", "--dry-run", str(offline[0])], cwd=run,
                          capture_output=True, text=True, timeout=120)
    assert sync.returncode == 0, sync.stderr[-2000:]
    assert "Would sync 1 run" in sync.stdout + sync.stderr
