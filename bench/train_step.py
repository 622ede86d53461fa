"""Full training-step throughput: the real trainer (data, schedule, DDP, optimizer) on a config.

Runs ``--warmup`` untimed and ``--steps`` timed optimizer steps of ``nvlm_train``'s Trainer on
the synthetic demo data (built into a temporary cache), then prints one JSON line: step time,
tokens/s (real tokens, not padding), achieved TFLOP/s per device (model FLOPs from
``nvlm_train.model.flops``, attention per packed sample), padding fraction, MFU and peak memory.
Works on CPU (fp32, gloo) and on GPUs (bf16, NCCL); run it under torchrun for several ranks.
Hydra overrides after ``--`` go to the training config.

CPU:          python bench/train_step.py --config nvlm_d_tiny --steps 5
One H100:     python bench/train_step.py --config nvlm_d_2b -- train.seq_length=3200 train.micro_batch_size=1
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default="nvlm_d_tiny", help="model config name under configs/model/")
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="device peak TFLOP/s for MFU (default: known GPU peak, none on CPU)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for the training config")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from omegaconf import OmegaConf

    from nvlm_train.config.store import compose_config, to_dataclass
    from nvlm_train.runtime.launch_env import read_launch_env
    from nvlm_train.runtime.session import distributed_session
    from nvlm_train.training.loop import Trainer
    from nvlm_train.training.metrics import memory_gb, peak_tflops_per_gpu, throughput

    tmp = tempfile.mkdtemp(prefix="nvlm_bench_")
    overrides = [f"model={args.config}", "data=demo", f"run.dir={tmp}/run", "run.wandb_mode=disabled",
                 "data.demo_train_samples=400", "data.demo_heldout_samples=8",
                 f"train.iters={args.warmup + args.steps}", "optimizer.warmup_iters=0",
                 *(["train.seq_length=256", "train.micro_batch_size=2", "train.global_batch_size=4"]
                   if args.config == "nvlm_d_tiny" else []), *args.overrides]
    cfg = compose_config("train", overrides)
    train_cfg = to_dataclass(cfg)
    env = read_launch_env()
    train_cfg.validate(env.world_size)
    with distributed_session(train_cfg.parallel, seed=train_cfg.train.seed,
                             num_language_layers=train_cfg.model.language.num_layers, env=env) as on_cpu:
        try:
            trainer = Trainer(train_cfg, OmegaConf.to_yaml(cfg), on_cpu)
            times, rates = [], []
            total = args.warmup + args.steps
            for i in range(total):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                step = trainer.train_step()
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                print(f"step {i + 1}/{total}: {dt:.3f} s loss {step['loss']:.4f}", file=sys.stderr, flush=True)
                if i >= args.warmup:  # real tokens, attention per packed sample (metrics.throughput)
                    times.append(dt)
                    rates.append(throughput(train_cfg.model, step["counts"], int(step["tiles"]), dt,
                                            env.world_size, None))
            world = env.world_size
            step_time = statistics.median(times)
            tflops = statistics.median(r["tflops_per_gpu"] for r in rates)
            peak = args.peak_tflops or peak_tflops_per_gpu()
            result = {
                "config": args.config,
                "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                "world_size": world,
                "layout": {"tp": train_cfg.parallel.tp, "pp": train_cfg.parallel.pp},
                "dtype": "bf16" if trainer.precision.bf16 else "fp32",
                "step_time_s": step_time,
                "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rates),
                "padding_fraction": statistics.median(r["padding_fraction"] for r in rates),
                "tflops_per_gpu": tflops,
                "mfu": tflops / peak if peak else None,
                "peak_tflops": peak,
                "peak_memory_gb": memory_gb(),
                "steps": args.steps,
                "final_loss": step["loss"],
            }
            trainer.loader.close()
            if env.rank == 0:
                print(json.dumps(result))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
