"""The training loop: megatron-core schedules, DDP, optimizer, checkpoints, metrics, preemption.

Data flow per iteration: the first stage's TP rank 0 of each DP replica reads the micro-batches
and sends each rank of its replica what its stage needs (``training.batches``; every rank reads
with ``data.broadcast_batches=false``), one micro-batch when the schedule asks for it; megatron's
1F1B schedule (interleaved with ``parallel.vpp``) runs forward/backward, ``finalize_model_grads``
reduces gradients over DP and divides them by the global assistant-token count, the optimizer
clips and steps.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func

from nvlm_train.checkpoint.dist import TrainingState, load_checkpoint, save_checkpoint
from nvlm_train.checkpoint.layout import CheckpointError, iteration_dir, latest_iteration, resolve_checkpoint
from nvlm_train.checkpoint.saved_run import SavedRun
from nvlm_train.config.errors import ConfigError
from nvlm_train.config.train import TrainConfig
from nvlm_train.data.errors import DataQualityError
from nvlm_train.data.loader import by_dataset, by_reason
from nvlm_train.data.path_report import DataPathError
from nvlm_train.data.prompt import get_prompt_format, saved_prompt
from nvlm_train.data.recipe import RecipeError
from nvlm_train.evaluation.during_training import TrainingBenchmarks
from nvlm_train.model.builder import build_model
from nvlm_train.model.token_counts import TokenCounts
from nvlm_train.model.transformer_config import Precision
from nvlm_train.runtime.launch_env import read_launch_env
from nvlm_train.runtime.session import distributed_session
from nvlm_train.training.batches import BatchFeed, MicroBatches, ReaderFailed
from nvlm_train.training.data import ensure_demo_data, eval_loader, train_loader
from nvlm_train.training.forward_step import forward_step
from nvlm_train.training.metrics import MetricsWriter, StepTimer, memory_gb, peak_tflops_per_gpu, throughput
from nvlm_train.training.metrics_resume import drop_metrics_after
from nvlm_train.training.optim import (
    build_optimizer,
    configure_schedule_hooks,
    params_in_sync,
    step_if_finite,
    wrap_ddp,
)
from nvlm_train.training.signals import install_process_flag
from nvlm_train.training.stop_marker import write_stop_marker
from nvlm_train.training.wandb_guard import guard_wandb


class NonFiniteError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient norm."""


def _all_reduce(values: list[float], group=None, op=dist.ReduceOp.SUM) -> list[float]:
    """Host numbers reduced over ``group`` (through the device where the group is NCCL's)."""
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend(group) == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=op, group=group)
    return t.cpu().tolist()


def _global_loss(reports: list[dict], device: torch.device) -> tuple[float, float]:
    """(loss sum, token count) of the global batch, on every rank: one reduction and one host read.

    The sums stay on the device until then; the last stage's TP ranks all hold the same sums (the
    vocab-parallel loss is whole on each), so the world-wide sum counts each replica TP times.
    """
    local = torch.zeros(2, dtype=torch.float64, device=device)
    if parallel_state.is_pipeline_last_stage(ignore_virtual=True) and reports:
        local += torch.stack([r["lm loss"] for r in reports]).sum(0).double()
    dist.all_reduce(local)
    loss_sum, tokens = (local / parallel_state.get_tensor_model_parallel_world_size()).tolist()
    return loss_sum, tokens


class Trainer:
    def __init__(self, cfg: TrainConfig, config_yaml: str, on_cpu: bool):
        self.cfg, self.config_yaml, self.on_cpu = cfg, config_yaml, on_cpu
        self.benchmarks = TrainingBenchmarks(cfg)  # train.eval_benchmarks, checked before anything is built
        self.run_dir = Path(cfg.run.dir)
        self.ckpt_root = self.run_dir / "checkpoints"
        self.world = dist.get_world_size()
        self.rank0 = dist.get_rank() == 0
        self.num_micro = cfg.num_microbatches(self.world)
        self.precision = Precision.of_run(cfg.train.precision)
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.dp_size = parallel_state.get_data_parallel_world_size()

        self._check_prompt()
        data_root = cfg.data.data_root
        if cfg.data.build_demo:
            data_root = str(ensure_demo_data(cfg))
        self.data_root = data_root
        self.loader = train_loader(cfg, data_root, self.dp_rank, self.dp_size)

        built = build_model(cfg.model, cfg.parallel, self.precision, packed=cfg.data.packing)
        self.built = built
        self.chunks = wrap_ddp(built.chunks, cfg, on_gpu=not on_cpu)
        self.device = next(built.chunks[0].parameters()).device
        self.feed = BatchFeed(cfg.data.broadcast_batches, self.device)
        self.optimizer, self.scheduler = build_optimizer(self.chunks, cfg, self.precision.bf16)
        configure_schedule_hooks(self.chunks, self.optimizer)
        self.state = TrainingState()
        self._restore()
        if self.rank0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(config_yaml)
            dropped = drop_metrics_after(self.run_dir, self.state.iteration)  # iterations to be repeated
            if dropped:
                self._say(f"metrics.jsonl: dropped {dropped} record(s) after iteration {self.state.iteration}")
        self.metrics = guard_wandb(MetricsWriter(self.run_dir, self.rank0, cfg.run.wandb_mode, cfg.run.wandb_project,
                                                 cfg.run.name, yaml.safe_load(config_yaml)))
        self.peak = peak_tflops_per_gpu()

    # -- checkpoints ---------------------------------------------------------------------------------
    def _check_prompt(self) -> None:
        """A resumed run must keep the prompt format its checkpoint trained with (checked before any build)."""
        if latest_iteration(self.ckpt_root) is None:
            return
        run = SavedRun.from_folder(self.ckpt_root)
        folder, saved = run.folder, run.prompt
        now = saved_prompt(asdict(self.cfg.data))
        if saved != now:
            preset = get_prompt_format(saved[0]).system_message
            system = "null" if saved[1] is None else "preset" if saved[1] == preset else repr(saved[1])
            raise CheckpointError(
                f"{folder} was trained with prompt format {saved[0]!r} and system message {saved[1]!r}, but this "
                f"run has data.prompt_format={now[0]!r} and system message {now[1]!r}; resume with "
                f"data.prompt_format={saved[0]} data.system_prompt={system}, or start a new run.dir "
                f"(checkpoint.init_from=...) to train with another prompt")

    def _skip_counts(self) -> dict:
        """Skipped samples over every data-parallel rank (collective): each rank reads its own share,
        what indexing left out is the same on every rank and is counted once. (Ranks that receive
        their batches skip nothing; rank 0 reads, so its data-parallel group holds every reader.)"""
        shares: list = [None] * self.dp_size
        dist.all_gather_object(shares, self.loader.sample_skips, group=parallel_state.get_data_parallel_group())
        total = Counter(self.loader.index_skips)
        for share in shares:
            total.update(share)
        return {"skipped_samples": dict(sorted(by_reason(total).items())), "skipped_by_dataset": by_dataset(total)}

    def _check_data_quality(self) -> None:
        """Every rank stops together when any rank's recent samples were mostly skipped (collective)."""
        problem = self.loader.policy.exceeded()
        if _all_reduce([1.0 if problem else 0.0], op=dist.ReduceOp.MAX)[0] > 0:
            if problem and not self.rank0:
                print(f"nvlm-train: data-parallel rank {self.dp_rank}: {problem}", file=sys.stderr, flush=True)
            raise DataQualityError(problem or "another data-parallel rank skipped too many samples (see above)")

    def _restore(self) -> None:
        latest = latest_iteration(self.ckpt_root)
        if latest is not None:
            folder = iteration_dir(self.ckpt_root, latest)
            SavedRun.from_folder(folder).check_architecture(self.cfg.model)
            self.state, data_state = load_checkpoint(folder, self.chunks, self.optimizer, self.scheduler)
            if data_state is None and not self.cfg.checkpoint.reset_data:
                raise CheckpointError(
                    f"{folder} was saved at another data-parallel size, so the data position cannot be "
                    f"restored exactly; set checkpoint.reset_data=true to restart the data stream"
                )
            if data_state is not None and not self.cfg.checkpoint.reset_data:
                try:
                    self.loader.load_state_dict(data_state)
                except ValueError as exc:
                    raise CheckpointError(
                        f"{exc}; set checkpoint.reset_data=true to restart the data stream instead"
                    ) from exc
            self._say(f"resumed from {folder} at iteration {self.state.iteration}")
        elif self.cfg.checkpoint.init_from:
            folder, _ = resolve_checkpoint(self.cfg.checkpoint.init_from)
            SavedRun.from_folder(folder).check_architecture(self.cfg.model)
            load_checkpoint(folder, self.chunks, weights_only=True)
            self._say(f"initialised model weights from {folder}")

    def save(self) -> Path:
        with params_in_sync(self.chunks):
            return self._save()

    def _save(self) -> Path:
        folder = save_checkpoint(self.ckpt_root, self.chunks, self.optimizer, self.scheduler,
                                      self.loader.state_dict(), self.state, self.config_yaml,
                                      self.cfg.checkpoint.keep_last)
        self._say(f"saved checkpoint {folder}")
        return folder

    # -- steps ---------------------------------------------------------------------------------------
    def _run_schedule(self, batches: MicroBatches, forward_only: bool) -> list[dict]:
        iterators = batches.iterators()
        reports = get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=iterators if len(self.chunks) > 1 else iterators[0],
            model=self.chunks if len(self.chunks) > 1 else self.chunks[0],
            num_microbatches=batches.count,
            seq_length=self.cfg.train.seq_length,
            micro_batch_size=self.cfg.train.micro_batch_size,
            forward_only=forward_only,
        )
        batches.check_consumed()
        self.feed.flush()
        return reports

    def train_step(self) -> dict:
        batches = self.feed.micro_batches(self.loader, self.num_micro, len(self.chunks))
        for chunk in self.chunks:
            chunk.train()
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        reports = self._run_schedule(batches, forward_only=False)
        loss_sum, tokens = _global_loss(reports, self.device)
        loss = loss_sum / max(tokens, 1.0)
        grad_norm = step_if_finite(self.optimizer) if math.isfinite(loss) else None
        finite = grad_norm is not None
        if finite:
            self.scheduler.step(increment=1)
            self.state.skipped_steps = 0
        else:
            self.optimizer.zero_grad()
            self.state.skipped_steps += 1
            self._say(f"iteration {self.state.iteration + 1}: non-finite loss or gradient, step skipped "
                      f"({self.state.skipped_steps} in a row)")
            if self.state.skipped_steps >= self.cfg.train.max_nonfinite_in_a_row:
                raise NonFiniteError(
                    f"{self.state.skipped_steps} consecutive steps had a non-finite loss or gradient norm; "
                    f"lower optimizer.lr, check the data, or resume from an earlier checkpoint"
                )
        st, c = batches.stats, batches.stats.counts
        samples, tiles, rows, real, padded, sum_sq = _all_reduce(  # host counts: gloo, no device sync
            [st.samples, st.tiles, st.rows, c.real_tokens, c.padded_tokens, c.sum_sq_lengths],
            parallel_state.get_data_parallel_group_gloo())
        counts = TokenCounts(int(real), int(padded), int(sum_sq), int(samples))
        self.state.iteration += 1
        self.state.consumed_samples += int(samples)
        return {"loss": loss, "grad_norm": grad_norm, "tiles": tiles, "rows": rows, "counts": counts,
                "finite": finite}

    def evaluate(self) -> float | None:
        """Loss over ``train.eval_iters`` held-out micro-batches per replica; past the end of the held-out
        set they are padding (loss mask 0), so the schedule's length is known before it starts."""
        loader = eval_loader(self.cfg, self.data_root, self.dp_rank, self.dp_size)
        if loader is None:
            return None
        for chunk in self.chunks:
            chunk.eval()
        count = self.cfg.train.eval_iters
        try:
            with torch.no_grad():
                batches = self.feed.micro_batches(loader, count, len(self.chunks), pad=True)
                reports = self._run_schedule(batches, forward_only=True) if count else []
        finally:
            loader.close()
        loss_sum, tokens = _global_loss(reports, self.device)
        return loss_sum / max(tokens, 1.0)

    # -- loop ----------------------------------------------------------------------------------------
    def _say(self, msg: str) -> None:
        if self.rank0:
            print(msg, file=sys.stderr, flush=True)

    def _record(self, step: dict, dt: float) -> dict:
        # Real tokens and per-sample attention: padding is neither work nor throughput.
        rates = throughput(self.cfg.model, step["counts"], int(step["tiles"]), dt, self.world, self.peak)
        return {
            "iteration": self.state.iteration,
            "loss": step["loss"],
            "lr": self.optimizer.param_groups[0]["lr"],
            "grad_norm": step["grad_norm"],
            **rates,
            "memory_gb": memory_gb(),
            "step_time_s": dt,
            "consumed_samples": self.state.consumed_samples,
            **self._skip_counts(),
            "skipped_steps": self.state.skipped_steps,
        }

    def run(self) -> int:
        cfg = self.cfg.train
        preempt = install_process_flag()  # usually installed already by the entry point
        layout = f"TP{self.cfg.parallel.tp} PP{self.cfg.parallel.pp} DP{self.dp_size}"
        tiles_where = self.loader.cfg.tile_route.describe()
        self._say(f"training {self.cfg.model.name} ({layout}, {'bf16' if self.precision.bf16 else 'fp32'}, "
                  f"{self.num_micro} micro-batches/step, tiles cut {tiles_where}) "
                  f"from iteration {self.state.iteration} to {cfg.iters}")
        saved_at = self.state.iteration if latest_iteration(self.ckpt_root) is not None else None
        try:
            timer = StepTimer(synchronize=cfg.sync_timing)
            while self.state.iteration < cfg.iters:
                step = self.train_step()
                dt = timer.lap()
                it = self.state.iteration
                record = None
                if it % cfg.log_interval == 0 or it == cfg.iters:
                    record = self._record(step, dt)
                if cfg.eval_interval and it % cfg.eval_interval == 0:
                    record = record or self._record(step, dt)
                    with params_in_sync(self.chunks):
                        record["val_loss"] = self.evaluate()
                        record.update(self.benchmarks.scores(self))
                if record is not None:
                    self.metrics.log(record)
                    self.metrics.console(record)
                if it % cfg.log_interval == 0:
                    self._check_data_quality()
                if cfg.save_interval and it % cfg.save_interval == 0:
                    self.save()
                    saved_at = it
                stop = cfg.exit_interval and it % cfg.exit_interval == 0 and it < cfg.iters
                if preempt.agreed() or stop:
                    why = "exit interval reached" if stop else "preemption signal received"
                    self._say(f"{why}: saving at iteration {it} and exiting")
                    if saved_at != it:
                        self.save()
                    if not stop and self.rank0 and it < cfg.iters:
                        write_stop_marker(preempt.requested, it)  # the sbatch requeues on it
                    return 0
                timer.lap()  # exclude logging/eval/save time from the next step's timing
            if saved_at != self.state.iteration:
                self.save()
            return 0
        finally:
            self.loader.close()
            self.metrics.close()


def run_training(cfg: TrainConfig, config_yaml: str) -> int:
    """Validate, initialise the distributed runtime, train, tear down. Returns the exit code."""
    env = read_launch_env()
    try:
        cfg.validate(env.world_size)
    except ConfigError as exc:
        if env.rank == 0:  # every rank finds the same error; say it once
            print(f"nvlm-train: configuration error: {exc}", file=sys.stderr)
        return 2
    with distributed_session(cfg.parallel, seed=cfg.train.seed, num_language_layers=cfg.model.language.num_layers,
                             env=env) as on_cpu:
        try:
            trainer = Trainer(cfg, config_yaml, on_cpu)
            return trainer.run()
        except ReaderFailed as exc:  # the reading rank reports its own error; each of its receivers says why it stops
            print(f"nvlm-train: rank {dist.get_rank()}: {exc}", file=sys.stderr)
            return 2
        except (ConfigError, CheckpointError, NonFiniteError, DataPathError, RecipeError, DataQualityError) as exc:
            if dist.get_rank() == 0:  # every rank finds the same problem; say it once
                print(f"nvlm-train: {exc}", file=sys.stderr)
            return 2

