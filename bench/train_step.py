"""Full training-step throughput: the real trainer (data, schedule, DDP, optimizer) on a config.

Runs ``--warmup`` untimed and ``--steps`` timed ``Trainer.train_step()`` calls (reading batches,
forward, backward, optimizer) and prints one JSON line: step time, tokens/s (real tokens, not
padding), achieved TFLOP/s per device (model FLOPs from ``nvlm_train.model.flops``, attention per
packed sample, via ``nvlm_train.training.metrics.throughput``), padding fraction, MFU and peak memory.
Works on CPU (fp32, gloo) and on GPUs (bf16, NCCL); run it under torchrun for several ranks.
Hydra overrides after ``--`` go to the training config.

Data: the synthetic demo data (built into a temporary cache), or with ``--data-dir`` full-row
benchmark shards (``bench/_perf_tools.write_bench_shards``: one 7-tile image + text filling
``train.seq_length`` per sample), built once per shape under that folder.
``--profile`` adds one profiled step (time shares attention / gemm / elementwise / idle);
``--model-step`` first times the same model's forward+backward alone (``bench/model_step.measure``,
same micro-batch size, micro-batches, sequence and tiles) and reports ``trainer_overhead_ms``.
``--proxy-layers auto`` keeps as many language layers as fit the device (``_perf_tools.estimate_proxy_layers``).
``--batch FILE`` runs one case per line in this process (the imports dominate a tiny CPU case).
MFU is null without a known device peak (CPU): pass ``--peak-tflops`` or set NVLM_PEAK_TFLOPS.

CPU:          python bench/train_step.py --config nvlm_d_tiny --steps 5
One H100:     python bench/train_step.py --config nvlm_d_2b -- train.seq_length=3200 train.micro_batch_size=1
gpu_perf.sh:  python bench/train_step.py --case 2b --config nvlm_d_2b --data-dir /tmp/d --profile --model-step -- ...
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # model_step, _perf_tools


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default="nvlm_d_tiny", help="model config name under configs/model/")
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="device peak TFLOP/s for MFU (default: known GPU peak, none on CPU)")
    p.add_argument("--case", default=None, help="case name written into the JSON line")
    p.add_argument("--data-dir", default=None,
                   help="cache folder for full-row benchmark shards (built for this config's sizes on first use)")
    p.add_argument("--bench-rows", type=int, default=64, help="samples in the benchmark shards (--data-dir)")
    p.add_argument("--profile", action="store_true", help="one extra profiled trainer step: time shares")
    p.add_argument("--model-step", action="store_true",
                   help="first time the model's forward+backward alone (bench/model_step.py) for trainer_overhead_ms")
    p.add_argument("--proxy-layers", default=None, metavar="auto|N",
                   help="language layers to keep: N, or auto = as many as fit the device (TP1/PP1)")
    p.add_argument("--memory-gb", type=float, default=None,
                   help="device memory for --proxy-layers auto (default: this GPU's total; required on CPU)")
    p.add_argument("--mfu-target", type=float, default=None, help="MFU goal of this case (reported with target_met)")
    p.add_argument("--if-exists", action="append", default=[], metavar="KEY=VALUE",
                   help="a Hydra override applied only if KEY exists in the composed config (repeatable); "
                        "the skipped ones are listed in the JSON")
    p.add_argument("--batch", metavar="FILE", default=None,
                   help="run several cases in this one process: each line of FILE holds one case's arguments "
                        "(shell words); imports are paid once (gpu_perf.sh --smoke). A failed case prints "
                        '{"case", "error", "rc"} and makes the exit status 1')
    p.add_argument("overrides", nargs="*", help="Hydra overrides for the training config")
    args = p.parse_args(argv)
    if args.proxy_layers not in (None, "auto") and not (args.proxy_layers.isdigit() and int(args.proxy_layers) > 0):
        p.error(f"--proxy-layers must be auto or a positive integer, got {args.proxy_layers!r}")
    return args


def _key_exists(cfg, key: str) -> bool:
    from omegaconf import OmegaConf

    node, _, leaf = key.lstrip("+~").rpartition(".")
    parent = OmegaConf.select(cfg, node) if node else cfg
    return parent is not None and OmegaConf.is_dict(parent) and leaf in parent


def run_batch(path: str) -> int:
    """Each line of ``path`` through ``main``, one after the other (each in its own distributed session)."""
    import shlex
    import traceback

    rc = 0
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        argv = shlex.split(line)
        case = parse_args(argv).case
        try:
            status = main(argv)
            if status:
                raise RuntimeError(f"exit status {status}")
        except (Exception, SystemExit) as exc:  # report the case and go on with the next one
            traceback.print_exc()
            print(json.dumps({"case": case, "error": f"{type(exc).__name__}: {exc}", "rc": 1}), flush=True)
            rc = 1
        gc.collect()
    return rc


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.batch:
        return run_batch(args.batch)
    import torch
    import torch.distributed as dist
    from omegaconf import OmegaConf

    from nvlm_train.config.store import compose_config, to_dataclass
    from nvlm_train.model.transformer_config import Precision
    from nvlm_train.runtime.launch_env import read_launch_env
    from nvlm_train.runtime.session import distributed_session
    from nvlm_train.training.loop import Trainer
    from nvlm_train.training.metrics import peak_tflops_per_gpu, throughput

    on_gpu = torch.cuda.is_available()

    def say(msg: str) -> None:
        print(f"[train_step{' ' + args.case if args.case else ''}] {msg}", file=sys.stderr, flush=True)

    tmp = tempfile.mkdtemp(prefix="nvlm_bench_")
    total = args.warmup + args.steps
    base = [f"model={args.config}", "data=demo", f"run.dir={tmp}/run", "run.wandb_mode=disabled",
            "data.demo_train_samples=400", "data.demo_heldout_samples=8",
            f"train.iters={total + (1 if args.profile else 0)}", "optimizer.warmup_iters=0",
            *(["train.seq_length=256", "train.micro_batch_size=2", "train.global_batch_size=4"]
              if args.config == "nvlm_d_tiny" else [])]
    if args.proxy_layers not in (None, "auto"):
        base.append(f"model.language.num_layers={int(args.proxy_layers)}")
    first = compose_config("train", [*base, *args.overrides])
    applied = [o for o in args.if_exists if _key_exists(first, o.partition("=")[0])]
    skipped = [o for o in args.if_exists if o not in applied]
    for o in skipped:
        say(f"skipping override {o}: no such key in this tree's config")
    overrides = [*base, *applied, *args.overrides]
    env = read_launch_env()
    from _perf_tools import bench_data_dir, estimate_proxy_layers, write_bench_shards
    from model_step import peak_memory_gb

    cfg = compose_config("train", overrides)
    train_cfg = to_dataclass(cfg)
    train_cfg.validate(env.world_size)
    bf16 = Precision.of_run(train_cfg.train.precision).bf16  # the trainer's dtype rule
    with distributed_session(train_cfg.parallel, seed=train_cfg.train.seed,
                             num_language_layers=train_cfg.model.language.num_layers, env=env) as on_cpu:
        try:
            estimate = None
            if args.proxy_layers == "auto":
                memory = args.memory_gb or (torch.cuda.mem_get_info()[1] / 1e9 if on_gpu else None)
                if memory is None:
                    raise SystemExit("--proxy-layers auto needs --memory-gb on CPU")
                bench_tiles = _bench_tiles(train_cfg)
                estimate = estimate_proxy_layers(train_cfg.model, train_cfg.train.seq_length,
                                                 train_cfg.train.micro_batch_size, bench_tiles, memory,
                                                 bf16=bf16, reserve_gb=6.0 if on_gpu else 0.0,
                                                 max_layers=train_cfg.model.language.num_layers)
                say(f"proxy: {estimate['proxy_layers']} language layers fit {memory:.4g} GB "
                    f"(fixed {estimate['fixed_gb']:.4g} GB + {estimate['per_layer_gb']:.4g} GB per layer)")
                overrides = [*overrides, f"model.language.num_layers={estimate['proxy_layers']}"]
                cfg = compose_config("train", overrides)
                train_cfg = to_dataclass(cfg)
                train_cfg.validate(env.world_size)
            if args.data_dir:
                root = bench_data_dir(args.data_dir, train_cfg, args.bench_rows, 0)
                if env.rank == 0:
                    write_bench_shards(args.data_dir, train_cfg, args.bench_rows, 0, log=say)
                dist.barrier()
                overrides = [*overrides, "data.build_demo=false", f"data.recipe={root / 'recipe.yaml'}",
                             f"data.data_root={root}", "data.eval_recipe=null"]
                cfg = compose_config("train", overrides)
                train_cfg = to_dataclass(cfg)
                train_cfg.validate(env.world_size)
            num_micro = train_cfg.num_microbatches(env.world_size)
            model_result = None
            if args.model_step:
                from model_step import measure

                if train_cfg.parallel.tp * train_cfg.parallel.pp > 1:
                    raise SystemExit("--model-step builds the model at TP1/PP1: drop it for parallel.tp/pp > 1")

                say("model forward+backward alone ...")
                model_result = measure(train_cfg.model, bf16=bf16,
                                       micro_batch_size=train_cfg.train.micro_batch_size,
                                       seq_length=train_cfg.train.seq_length, tiles=_bench_tiles(train_cfg),
                                       steps=args.steps, warmup=args.warmup, seed=train_cfg.train.seed,
                                       micro_batches=num_micro, packed=train_cfg.data.packing,
                                       profile=args.profile, vision_cost=True, label=args.case)
                gc.collect()
                if on_gpu:
                    torch.cuda.empty_cache()
            if on_gpu:
                torch.cuda.reset_peak_memory_stats()
            say("building the trainer ...")
            trainer = Trainer(train_cfg, OmegaConf.to_yaml(cfg), on_cpu)
            times, rates = [], []
            for i in range(total):
                if on_gpu:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                step = trainer.train_step()
                if on_gpu:
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                say(f"step {i + 1}/{total}: {dt:.3f} s loss {step['loss']:.4f}")
                if i >= args.warmup:  # real tokens, attention per packed sample (metrics.throughput)
                    times.append(dt)
                    rates.append(throughput(train_cfg.model, step["counts"], int(step["tiles"]), dt,
                                            env.world_size, None))
            shares = {}
            if args.profile:
                say("profiled step ...")
                from _perf_tools import time_shares

                shares = time_shares(trainer.train_step, on_gpu)
            world = env.world_size
            step_time = statistics.median(times)
            tflops = statistics.median(r["tflops_per_gpu"] for r in rates)
            peak = args.peak_tflops or peak_tflops_per_gpu()
            mem, mem_kind = peak_memory_gb(on_gpu)
            result = {
                "case": args.case or args.config,
                "config": args.config,
                "device": torch.cuda.get_device_name() if on_gpu else "cpu",
                "world_size": world,
                "layout": {"tp": train_cfg.parallel.tp, "pp": train_cfg.parallel.pp},
                "dtype": "bf16" if trainer.precision.bf16 else "fp32",
                "mfu": tflops / peak if peak else None,
                "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rates),
                "step_ms": step_time * 1e3,
                "step_time_s": step_time,
                "peak_memory_gb": mem,
                "peak_memory_kind": mem_kind,
                "tflops_per_gpu": tflops,
                "peak_tflops": peak,
                "mfu_target": args.mfu_target,
                "target_met": (tflops / peak >= args.mfu_target) if peak and args.mfu_target else None,
                "mfu_note": "model FLOPs of real tokens / step time / device peak; null without a known peak "
                            "(CPU: set NVLM_PEAK_TFLOPS or --peak-tflops)",
                "padding_fraction": statistics.median(r["padding_fraction"] for r in rates),
                "real_tokens_per_step": statistics.median(r["real_tokens"] for r in rates),
                "seq_length": train_cfg.train.seq_length,
                "micro_batch_size": train_cfg.train.micro_batch_size,
                "num_microbatches": num_micro,
                "tiles_per_step": int(step["tiles"]),
                "language_layers": train_cfg.model.language.num_layers,
                "freeze": OmegaConf.to_container(cfg.model.freeze),
                "recompute": OmegaConf.to_container(cfg.model.recompute),
                "fusions": dataclasses.asdict(trainer.built.fusions),  # what model.fusion resolved to
                "data": "bench shards " + str(root) if args.data_dir else "demo",
                "overrides": overrides,
                "skipped_overrides": skipped,
                "steps": args.steps,
                "final_loss": step["loss"],
                **shares,
            }
            if estimate is not None:
                result["proxy_estimate"] = estimate
            if model_result is not None:
                m_tflops = model_result["tflops_per_s"] / world
                result["model_step"] = {
                    "mfu": m_tflops / peak if peak else None,
                    "tokens_per_s": model_result["tokens_per_s"],
                    "step_ms": model_result["step_ms"],
                    "peak_memory_gb": model_result["peak_memory_gb"],
                    "tflops_per_gpu": m_tflops,
                    **{k: model_result[k] for k in ("time_shares", "profiled_step_ms", "vision_cost_layers",
                                                    "head_cost_layers")
                       if k in model_result},
                    "note": "bench/model_step.measure: same model, micro-batches, rows and tiles, one synthetic "
                            "sample per row, no DDP/optimizer/data",
                }
                result["trainer_overhead_ms"] = result["step_ms"] - model_result["step_ms"]
            trainer.loader.close()
            if env.rank == 0:
                print(json.dumps(result), flush=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _bench_tiles(train_cfg) -> int:
    """Tiles per row of the benchmark samples: a 3:2 image at ``data.max_tiles`` (+ thumbnail)."""
    from nvlm_train.vision.tiling import num_tiles

    size = train_cfg.model.vision.image_size
    return num_tiles(3 * size, 2 * size, max_num=train_cfg.data.max_tiles, image_size=size)


if __name__ == "__main__":
    sys.exit(main())
