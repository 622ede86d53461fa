"""``nvlm-generate``: a megatron checkpoint answers a JSONL of prompts, batched with a KV cache.

Launch plainly (TP1/PP1) or under torchrun/SLURM at any TP x PP (the checkpoint reshards on load).
Records ``{"id", "question" | "messages", "images": [paths]}`` -> ``{"id", "response", "tokens",
"latency_s", "finish_reason"}``. Rerunning with the same --output continues where a killed run
stopped. Bad records (missing image, too long for the context, bad JSON) are skipped, counted and
reported; the exit status is 0 with them, 1 when the run itself fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from tqdm import tqdm


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nvlm-generate", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--checkpoint", required=True, help="a run's checkpoints/ folder or one iter_* folder")
    p.add_argument("--input", required=True, type=Path, help="JSONL of records (image paths relative to it)")
    p.add_argument("--output", required=True, type=Path, help="JSONL of results (appended to; resumable)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0: no top-k cut")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (per request, batch-independent)")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop string (repeatable)")
    p.add_argument("--stop-id", action="append", type=int, default=[], metavar="ID",
                   help="extra stop token id (repeatable; <|im_end|> and <|endoftext|> always stop)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-tiles", type=int, default=None, help="tiles per image (default: the checkpoint's)")
    p.add_argument("--max-context", type=int, default=None,
                   help="prompt + reply token limit (default: the model's max_position_embeddings)")
    p.add_argument("--max-records", type=int, default=None,
                   help="stop after generating this many records (the rest stays for a rerun)")
    p.add_argument("--tp", type=int, default=None, help="tensor parallel size (default: the launched world / --pp)")
    p.add_argument("--pp", type=int, default=None, help="pipeline parallel size (default 1)")
    p.add_argument("--no-progress", action="store_true")
    return p


def run(args: argparse.Namespace) -> dict:
    import torch.distributed as dist

    from nvlm_train.inference.engine import GenerationEngine, SamplingConfig
    from nvlm_train.inference.jsonl_io import append_lines, finished_ids, output_line, read_input
    from nvlm_train.runtime.launch_env import read_launch_env
    from nvlm_train.runtime.session import distributed_session

    records = read_input(args.input)
    env = read_launch_env()
    main_rank = env.rank == 0
    done = finished_ids(args.output) if main_rank else set()
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                              top_k=args.top_k, seed=args.seed, stop_strings=tuple(args.stop),
                              stop_ids=tuple(args.stop_id))
    skipped: Counter = Counter()
    generated = 0
    with distributed_session(_launched_layout(args, env.world_size), env=env):
        if env.world_size > 1:  # every rank works on rank 0's view of what is finished
            box = [done]
            dist.broadcast_object_list(box, src=0)
            done = box[0]
        seen: set[str] = set()
        todo = []
        for rec in records:
            if rec.error is not None:
                _skip(main_rank, skipped, rec.error.reason, f"line {rec.line}: {rec.error.message}")
            elif rec.request.id in seen:
                _skip(main_rank, skipped, "duplicate_id", f"line {rec.line}: id {rec.request.id!r} repeats")
            elif rec.request.id not in done:
                seen.add(rec.request.id)
                todo.append(rec.request)
            else:
                seen.add(rec.request.id)
        if args.max_records is not None:
            todo = todo[:args.max_records]
        engine = GenerationEngine.from_checkpoint(args.checkpoint, max_tiles=args.max_tiles,
                                                  batch_size=args.batch_size, max_context=args.max_context)
        bar = tqdm(total=len(todo), desc="nvlm-generate", unit="record", file=sys.stderr,
                   disable=args.no_progress or not main_rank, mininterval=1)
        for start in range(0, len(todo), args.batch_size):
            results = engine.generate(todo[start:start + args.batch_size], sampling)
            good = [r for r in results if not r.finish_reason.startswith("error:")]
            for r in results:
                if r.finish_reason.startswith("error:"):
                    _skip(main_rank, skipped, r.finish_reason[len("error:"):], f"id {r.id!r}: {r.error}")
            if main_rank and good:
                append_lines(args.output, [output_line(r) for r in good])
            generated += len(good)
            bar.update(len(results))
        bar.close()
    return {"generated": generated, "already_done": len(done), "skipped": sum(skipped.values()),
            "skipped_by_reason": dict(skipped), "output": str(args.output)}


def _launched_layout(args: argparse.Namespace, world: int):
    """--tp x --pp; by default all launched ranks are tensor-parallel."""
    from nvlm_train.config.parallel import ParallelConfig

    pp = args.pp or 1
    tp = args.tp or max(1, world // pp)
    return ParallelConfig(tp=tp, pp=pp)


def _skip(main_rank: bool, skipped: Counter, reason: str, message: str) -> None:
    skipped[reason] += 1
    if main_rank:
        print(f"nvlm-generate: skipped ({reason}) {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.input.is_file():
        print(f"nvlm-generate: error: --input {args.input} does not exist", file=sys.stderr)
        return 1
    from nvlm_train.checkpoint.layout import CheckpointError, resolve_checkpoint
    from nvlm_train.config.errors import ConfigError

    try:
        resolve_checkpoint(args.checkpoint)  # a wrong path fails before torch.distributed starts
        summary = run(args)
    except (CheckpointError, ConfigError, FileNotFoundError) as exc:
        print(f"nvlm-generate: error: {exc}", file=sys.stderr)
        return 1
    from nvlm_train.runtime.launch_env import read_launch_env

    if read_launch_env().rank == 0:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
