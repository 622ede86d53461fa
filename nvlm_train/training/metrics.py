"""Per-step metrics: a console line, ``<run.dir>/metrics.jsonl`` and wandb (offline by default)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import psutil
import torch

from nvlm_train.config.model import ModelConfig
from nvlm_train.model.flops import model_flops
from nvlm_train.model.token_counts import TokenCounts


def memory_gb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return psutil.Process().memory_info().rss / 2**30


def peak_tflops_per_gpu() -> float | None:
    """Dense bf16 peak of the local GPU, for MFU; None on CPU or unknown GPUs (set NVLM_PEAK_TFLOPS)."""
    if os.environ.get("NVLM_PEAK_TFLOPS"):
        return float(os.environ["NVLM_PEAK_TFLOPS"])
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, peak in (("H200", 989.0), ("H100", 989.0), ("A100", 312.0), ("B200", 2250.0), ("L40S", 362.0)):
        if key in name:
            return peak
    return None


def throughput(model: ModelConfig, counts: TokenCounts, tiles: int, seconds: float, world: int,
               peak_tflops: float | None) -> dict:
    """Honest step throughput: real tokens only; attention over each packed sample (``model.flops``)."""
    flops = model_flops(model, counts.real_tokens, tiles, sum_sq_lengths=counts.sum_sq_lengths)
    tflops = flops / seconds / world / 1e12
    return {
        "tokens_per_s": counts.real_tokens / seconds,
        "tflops_per_gpu": tflops,
        "mfu": (tflops / peak_tflops) if peak_tflops else None,
        "padding_fraction": counts.padding_fraction,
        "real_tokens": counts.real_tokens,
        "padded_tokens": counts.padded_tokens,
    }


class MetricsWriter:
    """Written by one rank (global rank 0) only; other ranks get a no-op writer."""

    def __init__(self, run_dir: Path, enabled: bool, wandb_mode: str, wandb_project: str, run_name: str | None,
                 config: dict, resume_id: str | None = None):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.wandb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if wandb_mode != "disabled":
            self.wandb = _init_wandb(Path(run_dir), wandb_mode, wandb_project, run_name, config, resume_id)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if isinstance(v, (int, float))},
                           step=record["iteration"])

    def console(self, record: dict) -> None:
        if not self.enabled:
            return
        parts = [f"iter {record['iteration']:>6}"]
        for key, fmt in (("loss", "{:.4f}"), ("val_loss", "{:.4f}"), ("lr", "{:.3e}"), ("grad_norm", "{:.3f}"),
                         ("tokens_per_s", "{:.0f}"), ("padding_fraction", "{:.1%}"), ("tflops_per_gpu", "{:.2f}"),
                         ("mfu", "{:.1%}"),
                         ("memory_gb", "{:.2f}")):
            if record.get(key) is not None:
                parts.append(f"{key} " + fmt.format(record[key]))
        if record.get("skipped_samples"):
            parts.append("skipped " + ",".join(f"{k}={v}" for k, v in sorted(record["skipped_samples"].items())))
        print(" | ".join(parts), file=sys.stdout, flush=True)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def _init_wandb(run_dir: Path, mode: str, project: str, name: str | None, config: dict, resume_id: str | None):
    try:
        import wandb
    except ImportError:  # pragma: no cover - wandb is a dependency, but stay usable without it
        print("wandb is not installed: metrics go to metrics.jsonl only", file=sys.stderr)
        return None
    os.environ.setdefault("WANDB_SILENT", "true")
    id_file = run_dir / "wandb_run_id.txt"
    run_id = resume_id or (id_file.read_text().strip() if id_file.is_file() else None)
    run = wandb.init(project=project, name=name, dir=str(run_dir), mode=mode, config=config, id=run_id,
                     resume="allow")
    id_file.write_text(run.id + "\n")
    return run


class StepTimer:
    """Wall time between laps. A step's host reads (the global loss after the schedule, the grad norm
    before the optimizer step) wait for the forward and backward; the optimizer's kernels may still
    run when the lap is taken and are counted in the next step. ``synchronize`` waits for them
    (exact per-step times, one more device sync per step)."""

    def __init__(self, synchronize: bool = False):
        self.synchronize = synchronize and torch.cuda.is_available()
        self.start = time.perf_counter()

    def lap(self) -> float:
        if self.synchronize:
            torch.cuda.synchronize()
        now = time.perf_counter()
        elapsed, self.start = now - self.start, now
        return elapsed
