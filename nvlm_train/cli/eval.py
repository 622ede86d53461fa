"""``nvlm-eval``: score a megatron checkpoint or an HF export on the model card's benchmarks.

Reads the benchmark from local files (``nvlm_train/evaluation/readers.py`` lists the accepted files and
columns per benchmark; nothing is downloaded), asks the model with NVLM-D's evaluation prompts,
scores with the benchmark's official metric and writes ``results.md``, ``results.json`` and
``predictions.jsonl`` to ``--out``. Reruns resume from the per-sample cache in ``--out/cache``.
A megatron checkpoint runs at ``--tp`` x ``--pp`` (spawned here, or under torchrun when launched by
it); an HF export loads with ``device_map="auto"`` on GPUs. Exit status 0 on success, 1 on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from nvlm_train.config.parallel import ParallelConfig
from nvlm_train.evaluation.benchmark_names import Benchmark
from nvlm_train.evaluation.images import ImageError
from nvlm_train.evaluation.records import RecordsError
from nvlm_train.evaluation.results import update_results, write_outputs
from nvlm_train.evaluation.runner import CacheMismatch, RunOptions, run_benchmark
from nvlm_train.evaluation.sandbox import SandboxUnavailable

USER_ERRORS = (CacheMismatch, RecordsError, ImageError, SandboxUnavailable, FileNotFoundError, ValueError)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="nvlm-eval", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmark", required=True, choices=[b.value for b in Benchmark])
    p.add_argument("--data", required=True, help="the benchmark's file or folder (demo: the demo data root)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a megatron run's checkpoints/ folder or one iter_* folder")
    src.add_argument("--hf", help="an HF NVLM-D export directory")
    p.add_argument("--out", required=True, help="output folder (results, predictions, cache)")
    p.add_argument("--limit", type=int, default=None, help="only the first N readable samples")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=None, help="override the benchmark's own limit")
    p.add_argument("--max-tiles", type=int, default=None,
                   help="override the benchmark's tiles per image (demo: default the checkpoint's training "
                        "setting, or the export's max_dynamic_patch)")
    p.add_argument("--tp", type=int, default=1, help="tensor parallel size for --checkpoint")
    p.add_argument("--pp", type=int, default=1, help="pipeline parallel size for --checkpoint")
    p.add_argument("--compare-card", action="store_true", help="add the card's NVLM-D 72B rows to results.md")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be >= 1")
    return args


def _options(args, writer: bool = True) -> RunOptions:
    return RunOptions(limit=args.limit, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                      max_tiles=args.max_tiles, progress=not args.no_progress, writer=writer)


def _finish(args, label: str, summary: dict, rows: list[dict]) -> dict:
    out = Path(args.out)
    bench = Benchmark(args.benchmark)
    results = update_results(out, label, {bench: summary})
    write_outputs(out, results, {bench: rows}, args.compare_card)
    return summary


def _megatron_rank(args) -> dict | None:
    import torch.distributed as dist

    from nvlm_train.evaluation.backends import EngineBackend

    writer = dist.get_rank() == 0
    backend = EngineBackend.from_checkpoint(args.checkpoint, batch_size=args.batch_size)
    summary, rows = run_benchmark(Benchmark(args.benchmark), args.data, backend, args.out, _options(args, writer))
    return _finish(args, backend.label, summary, rows) if writer else None


def _run_megatron(args) -> dict:
    from nvlm_train.runtime.session import distributed_session
    from nvlm_train.runtime.spawn import run_on_layout

    parallel = ParallelConfig(tp=args.tp, pp=args.pp)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by torchrun: this process is one rank
        with distributed_session(parallel):
            return _megatron_rank(args)
    return run_on_layout(_megatron_rank, parallel, args, brief_errors=USER_ERRORS)[0]


def _run_hf(args) -> dict:
    from nvlm_train.evaluation.backends import HFBackend

    backend = HFBackend.load(args.hf)
    summary, rows = run_benchmark(Benchmark(args.benchmark), args.data, backend, args.out, _options(args))
    return _finish(args, backend.label, summary, rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    for flag, path in (("--data", args.data), ("--checkpoint", args.checkpoint), ("--hf", args.hf)):
        if path is not None and not Path(path).exists():
            print(f"nvlm-eval: {flag} {path} does not exist", file=sys.stderr)
            return 1
    Path(args.out).mkdir(parents=True, exist_ok=True)
    try:
        summary = _run_hf(args) if args.hf else _run_megatron(args)
    except USER_ERRORS as exc:
        print(f"nvlm-eval: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - spawned ranks report failures as SpawnError
        from nvlm_train.runtime.spawn import SpawnError

        if isinstance(exc, SpawnError):
            print(f"nvlm-eval: {exc}", file=sys.stderr)
            return 1
        raise
    if summary is not None:
        print(json.dumps({args.benchmark: summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
