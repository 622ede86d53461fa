"""``python -m nvlm_train.cli.demo_eval {megatron,hf}``: the demo's held-out exact-match accuracy, one JSON line.

``megatron --checkpoint DIR --data-root DATA``: a training checkpoint through the generation engine
(``inference.evaluate``). ``hf --hf DIR --data-root DATA``: an HF export used the model card's way,
``AutoModel`` + ``trust_remote_code`` + ``model.chat`` (``inference.hf_eval``). Both print accuracy,
correct, total and per-task accuracy; ``nvlm-eval --benchmark demo`` scores the same set.
"""

from __future__ import annotations

import argparse
import json
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nvlm_train.cli.demo_eval", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="backend", required=True)
    mega = sub.add_parser("megatron", help="a training checkpoint (any TP/PP it was saved at; run at TP1)")
    mega.add_argument("--checkpoint", required=True, help="a run's checkpoints/ folder or one iter_* folder")
    mega.add_argument("--max-new-tokens", type=int, default=6)
    mega.add_argument("--batch-size", type=int, default=8)
    hf = sub.add_parser("hf", help="an exported HF NVLM-D directory, through model.chat")
    hf.add_argument("--hf", required=True, help="an exported HF NVLM-D directory")
    hf.add_argument("--max-tiles", type=int, default=None, help="default: the export's max_dynamic_patch")
    for s in (mega, hf):
        s.add_argument("--data-root", required=True, help="demo data root (with heldout/ shards)")
        s.add_argument("--limit", type=int, default=None, help="evaluate only the first N held-out items")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.backend == "megatron":
        from nvlm_train.inference.evaluate import evaluate

        result = evaluate(args.checkpoint, args.data_root, args.limit, args.max_new_tokens, args.batch_size)
    else:
        from nvlm_train.inference.hf_eval import evaluate_hf

        result = evaluate_hf(args.hf, args.data_root, args.limit, args.max_tiles)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
