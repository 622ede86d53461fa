"""Forward + backward step time, throughput and MFU of an NVLM-D model on one device.

Builds the model from ``configs/model/<config>.yaml`` (plus Hydra overrides), feeds it a
synthetic micro-batch (each row: a few text tokens, one image of ``--tiles`` tiles, text up to
``--seq-length``), runs ``--warmup`` untimed and ``--steps`` timed forward + backward steps
(gradients zeroed between steps, no optimizer) and prints one JSON line on stdout. FLOPs come
from ``nvlm_train.model.flops`` (model FLOPs: no recomputation, no padding; see that module).
Progress goes to stderr.

CPU smoke run:  python bench/model_step.py --config nvlm_d_tiny --steps 2 --warmup 1
One H100:       python bench/model_step.py --config nvlm_d_2b --impl transformer_engine
SFT-like step:  python bench/model_step.py --overrides model.freeze.vision=true
As the trainer: python bench/model_step.py --packed --micro-batches 4 --profile

``measure()`` is the reusable part: ``bench/train_step.py --model-step`` runs it on the trainer's
own model config in the same process, so ``bench/gpu_perf.sh`` can report the trainer's overhead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import resource
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _perf_tools

if TYPE_CHECKING:
    from nvlm_train.config.model import ModelConfig

# NVIDIA H100 SXM, dense bf16 tensor-core peak (989.4 TFLOP/s; H200 is the same). An assumption:
# pass --peak-tflops for other GPUs/dtypes (e.g. H100 PCIe bf16 756, H100 SXM tf32 495).
DEFAULT_PEAK_TFLOPS = 989.0
TEXT_PREFIX = 8  # text tokens before the image in every row


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Time NVLM-D forward+backward steps on one device (synthetic batch) and print one JSON line.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", default="nvlm_d_2b", help="model config name under configs/model/")
    p.add_argument("--overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="Hydra overrides, e.g. model.freeze.vision=true model.recompute.language=full")
    p.add_argument("--micro-batch-size", type=int, default=1, help="rows per micro-batch")
    p.add_argument("--seq-length", type=int, default=None,
                   help="tokens per row (default: 3200 on GPU, NVLM-D SFT's length; 256 on CPU)")
    p.add_argument("--tiles", type=int, default=None,
                   help="image tiles per row (default: 7 on GPU, NVLM-D SFT's 6 + thumbnail; 2 on CPU)")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default=None, help="default: bf16 on GPU, fp32 on CPU")
    p.add_argument("--peak-tflops", type=float, default=DEFAULT_PEAK_TFLOPS,
                   help="device peak TFLOP/s for MFU (default: ASSUMED H100 SXM dense bf16)")
    p.add_argument("--impl", choices=["torch", "transformer_engine", "auto"], default="torch",
                   help="layer implementation (model.impl)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--micro-batches", type=int, default=1,
                   help="forward+backward passes per step, gradients accumulated (as the trainer's schedule)")
    p.add_argument("--packed", action="store_true",
                   help="pass seq_boundaries/num_samples (one sample per row): the trainer's packed-row path")
    p.add_argument("--profile", action="store_true",
                   help="one extra step under torch.profiler: time shares attention/gemm/elementwise/idle")
    p.add_argument("--vision-cost", action="store_true",
                   help="also time text-only rows: vision_cost_layers, the ViT + projector cost in LLM layers "
                        "(what parallel.vision_cost_layers takes)")
    args = p.parse_args(argv)
    on_gpu = torch.cuda.is_available()
    args.seq_length = args.seq_length or (3200 if on_gpu else 256)
    args.tiles = args.tiles if args.tiles is not None else (7 if on_gpu else 2)
    args.dtype = args.dtype or ("bf16" if on_gpu else "fp32")
    for key in ("micro_batch_size", "seq_length", "steps", "micro_batches"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be >= 1")
    if args.tiles < 0 or args.warmup < 0:
        p.error("--tiles and --warmup must be >= 0")
    return args


def synthetic_batch(model: ModelConfig, rows: int, seq_length: int, tiles: int, seed: int,
                    packed: bool = False) -> dict[str, torch.Tensor]:
    """Rows of [text prefix][tiles x tokens_per_tile image-context tokens][text]; one sample per row.

    ``packed`` adds ``seq_boundaries`` and ``num_samples`` (one sample filling each row), which send the
    model down the packed-row (THD) attention path the trainer uses with ``data.packing``."""
    tpt, image_id, vocab = model.tokens_per_tile, model.language.image_token_id, model.language.vocab_size
    image_len = tiles * tpt
    if TEXT_PREFIX + image_len + 1 > seq_length:
        raise SystemExit(
            f"--tiles {tiles} needs {image_len} image-context tokens ({tpt} per tile) + {TEXT_PREFIX + 1} text "
            f"tokens, more than --seq-length {seq_length}; raise --seq-length or lower --tiles"
        )
    gen = torch.Generator().manual_seed(seed)
    text = torch.randint(0, vocab - 1, (rows, seq_length), generator=gen)
    tokens = text + (text >= image_id).long()  # any id except the image-context one
    if image_len:
        tokens[:, TEXT_PREFIX:TEXT_PREFIX + image_len] = image_id
    labels = torch.roll(tokens, -1, dims=1)
    loss_mask = (labels != image_id).float()
    loss_mask[:, -1] = 0.0
    position_ids = torch.arange(seq_length).expand(rows, -1).contiguous()
    size = model.vision.image_size
    # uint8 tiles, as the data pipeline delivers them (the ViT normalises them on the device)
    pixel_values = torch.randint(0, 256, (rows * tiles, model.vision.num_channels, size, size), generator=gen,
                                 dtype=torch.uint8)
    batch = {"tokens": tokens, "labels": labels, "loss_mask": loss_mask, "position_ids": position_ids,
             "pixel_values": pixel_values}
    if packed:
        batch["seq_boundaries"] = torch.tensor([[0, seq_length]] * rows, dtype=torch.int64)
        batch["num_samples"] = torch.ones(rows, dtype=torch.int64)
    return batch


def device_name(on_gpu: bool) -> str:
    if on_gpu:
        return torch.cuda.get_device_name(torch.cuda.current_device())
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return "cpu: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu: " + (platform.processor() or platform.machine())


def peak_memory_gb(on_gpu: bool) -> tuple[float, str]:
    """Peak memory in GB (1e9 bytes) and what it measures."""
    if on_gpu:
        return torch.cuda.max_memory_allocated() / 1e9, "torch.cuda.max_memory_allocated"
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return rss_kb * 1024 / 1e9, "process peak RSS (ru_maxrss)"


def measure(model_cfg: ModelConfig, *, bf16: bool, micro_batch_size: int, seq_length: int, tiles: int,
            steps: int, warmup: int, seed: int = 1, micro_batches: int = 1, packed: bool = False,
            profile: bool = False, vision_cost: bool = False, label: str | None = None) -> dict:
    """Build ``model_cfg`` alone (no DDP, no optimizer) and time ``steps`` forward+backward steps of
    ``micro_batches`` synthetic micro-batches each (after ``warmup``); the model is freed on return.

    Needs an initialised parallel state (``distributed_session``). Returns the step times, real-token
    throughput, model FLOPs (``nvlm_train.model.flops``), peak memory (reset first on a GPU) and, with
    ``profile``, the time shares of one extra step (``_perf_tools.time_shares``).

    ``vision_cost``: the same steps again on text-only rows of the same length; the difference is
    what the ViT + projector cost, reported in LLM layers (``vision_cost_layers``, what
    ``parallel.vision_cost_layers`` takes to balance the first pipeline stage). One layer's time is
    the text-only step less the output layer and loss, split off by their share of the step's model
    FLOPs (``head_cost_layers`` reports that part, which the last stage carries)."""
    from nvlm_train.config.parallel import ParallelConfig
    from nvlm_train.model.builder import build_model
    from nvlm_train.model.flops import flops_breakdown
    from nvlm_train.model.transformer_config import Precision

    on_gpu = torch.cuda.is_available()
    precision = Precision(params_dtype=torch.bfloat16, bf16=True) if bf16 else Precision()
    batch = synthetic_batch(model_cfg, micro_batch_size, seq_length, tiles, seed, packed)  # checks sizes
    built = build_model(model_cfg, ParallelConfig(), precision=precision, packed=packed)
    model = built.chunks[0]
    model.train()
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    host = ("seq_boundaries", "num_samples")  # the trainer keeps these on the host too (forward_step)
    batch = {k: v if k in host else v.to(device) for k, v in batch.items()}
    tokens = micro_batch_size * seq_length
    tiles_total = micro_batch_size * tiles
    flops = flops_breakdown(model_cfg, tokens, tiles_total, seq_length, model_cfg.freeze)
    n_mask = batch["loss_mask"].sum().clamp(min=1.0)
    # With model.fusion.grad_accumulation the weight-gradient GEMMs write into ``param.main_grad``, which
    # megatron's DDP wrapper normally provides: give the trainable weights fp32 buffers like its grad buffer.
    main_grads = []
    if getattr(getattr(built, "fusions", None), "grad_accumulation", False):
        for p in model.parameters():
            if p.requires_grad:
                p.main_grad = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
                main_grads.append(p.main_grad)

    def step(batch: dict = batch, tiles_total: int = tiles_total) -> float:
        model.zero_grad(set_to_none=True)
        for g in main_grads:
            g.zero_()
        total = 0.0
        for _ in range(micro_batches):  # gradients accumulate over the micro-batches, as in a schedule
            per_token = model(batch["tokens"], batch["position_ids"], labels=batch["labels"],
                              pixel_values=batch["pixel_values"] if tiles_total else None,
                              seq_boundaries=batch.get("seq_boundaries"), num_samples=batch.get("num_samples"))
            loss = (per_token.float() * batch["loss_mask"]).sum() / n_mask
            if loss.requires_grad:  # everything frozen: forward only
                loss.backward()
            total += float(loss.detach())
        return total / micro_batches

    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency, but keep the bench usable without it
        tqdm = None
    name = label or model_cfg.name
    total = warmup + steps
    bar = tqdm(total=total, desc=f"{name} model steps", file=sys.stderr, dynamic_ncols=True) if tqdm else None
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, loss = [], float("nan")
    for i in range(total):
        if on_gpu:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = step()  # float() of the loss waits for the device; synchronize for the backward too
        if on_gpu:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if i >= warmup:
            times.append(dt)
        if bar is not None:
            bar.set_postfix(phase="warmup" if i < warmup else "timed", step_s=f"{dt:.3f}", loss=f"{loss:.3f}")
            bar.update()
        else:
            print(f"step {i + 1}/{total} {dt:.3f}s loss {loss:.3f}", file=sys.stderr)
    if bar is not None:
        bar.close()
    mem, mem_kind = peak_memory_gb(on_gpu)
    shares = {}
    if profile:
        from _perf_tools import time_shares

        shares = time_shares(step, on_gpu)

    step_time = statistics.mean(times)
    vision = {}
    if vision_cost:
        text_only = synthetic_batch(model_cfg, micro_batch_size, seq_length, 0, seed, packed)
        text_only = {k: v if k in host else v.to(device) for k, v in text_only.items()}
        text_times = []
        for i in range(warmup + steps):
            if on_gpu:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step(text_only, 0)
            if on_gpu:
                torch.cuda.synchronize()
            if i >= warmup:
                text_times.append(time.perf_counter() - t0)
        text_time = statistics.mean(text_times)
        layers = model_cfg.language.num_layers
        headless = dataclasses.replace(model_cfg, language=dataclasses.replace(model_cfg.language, num_layers=0))
        text_flops = flops_breakdown(model_cfg, tokens, 0, seq_length, model_cfg.freeze).total
        head_share = flops_breakdown(headless, tokens, 0, seq_length, model_cfg.freeze).total / text_flops
        per_layer = text_time * (1.0 - head_share) / layers
        vision["vision_cost_layers"] = max(0.0, step_time - text_time) / per_layer
        vision["head_cost_layers"] = text_time * head_share / per_layer
    step_flops = flops.total * micro_batches
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    impl = built.impl
    return {  # the model is freed with this frame (callers: gc.collect() + torch.cuda.empty_cache())
        "step_time_s": step_time,
        "step_time_min_s": min(times),
        "step_time_median_s": statistics.median(times),
        "step_ms": step_time * 1e3,
        "tokens_per_s": tokens * micro_batches / step_time,
        "tiles_per_s": tiles_total * micro_batches / step_time,
        "tflops_per_s": step_flops / step_time / 1e12,
        "model_flops_per_step": step_flops,
        "model_flops_forward": flops.forward * micro_batches,
        "peak_memory_gb": mem,
        "peak_memory_kind": mem_kind,
        "impl": impl,
        "fused_grad_accumulation": bool(main_grads),
        "dtype": "bf16" if bf16 else "fp32",
        "micro_batch_size": micro_batch_size,
        "micro_batches": micro_batches,
        "packed": packed,
        "seq_length": seq_length,
        "tiles_per_row": tiles,
        "tokens_per_tile": model_cfg.tokens_per_tile,
        "freeze": asdict(model_cfg.freeze),
        "parameters": n_params,
        "trainable_parameters": n_trainable,
        "steps": steps,
        "warmup": warmup,
        "last_loss": loss,
        **shares,
        **vision,
    }


def run(args: argparse.Namespace) -> dict:
    # nvlm_train (megatron-core) is imported here so that --help stays fast.
    from nvlm_train.config.store import load_model_config

    model_cfg = load_model_config(args.config, [*args.overrides, f"model.impl={args.impl}"])
    result = measure(model_cfg, bf16=args.dtype == "bf16", micro_batch_size=args.micro_batch_size,
                     seq_length=args.seq_length, tiles=args.tiles, steps=args.steps, warmup=args.warmup,
                     seed=args.seed, micro_batches=args.micro_batches, packed=args.packed, profile=args.profile,
                     vision_cost=args.vision_cost, label=args.config)
    tflops = result["tflops_per_s"]
    return {
        **result,
        "mfu": tflops / args.peak_tflops,
        "peak_tflops": args.peak_tflops,
        "peak_tflops_note": "assumed device peak (default: H100 SXM dense bf16, 989); set --peak-tflops"
        if args.peak_tflops == DEFAULT_PEAK_TFLOPS else "given with --peak-tflops",
        "flops_convention": "model FLOPs (nvlm_train.model.flops): matmuls only, causal attention counted half, "
                            "no recompute, no padding; frozen parts get no weight-gradient FLOPs",
        "device": device_name(torch.cuda.is_available()),
        "config": args.config,
        "overrides": args.overrides,
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from nvlm_train.runtime.session import distributed_session

    with distributed_session(seed=args.seed):
        result = run(args)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
