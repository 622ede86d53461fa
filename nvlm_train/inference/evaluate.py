"""Held-out exact-match accuracy of a training checkpoint (megatron model), e.g. for the demo.

``python -m nvlm_train.inference.evaluate --checkpoint RUN/checkpoints --data-root DEMO_DATA``
prints one JSON line: accuracy, correct, total, per-task accuracy. The checkpoint may have been
saved at any TP/PP: it is loaded at TP1/PP1 in this process (dist checkpoints reshard).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

from tqdm import tqdm

from nvlm_train.config.parallel import ParallelConfig


def _args(argv):
    p = argparse.ArgumentParser(prog="python -m nvlm_train.inference.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a run's checkpoints/ folder or one iter_* folder")
    p.add_argument("--data-root", required=True, help="demo data root (with heldout/ shards)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N held-out items")
    p.add_argument("--max-new-tokens", type=int, default=6)
    return p.parse_args(argv)


def evaluate(checkpoint: str, data_root: str, limit: int | None = None, max_new_tokens: int = 6) -> dict:
    from nvlm_train.checkpoint.dist import load_checkpoint
    from nvlm_train.checkpoint.saved_run import SavedRun
    from nvlm_train.data.encode import encode_prompt
    from nvlm_train.data.synth import read_heldout
    from nvlm_train.data.tokenizer import TextTokenizer, build_demo_tokenizer
    from nvlm_train.inference.generate import greedy_generate
    from nvlm_train.model.builder import build_model
    from nvlm_train.runtime.session import distributed_session

    run = SavedRun.from_folder(checkpoint)
    model_cfg = run.model
    tok = TextTokenizer(run.tokenizer_dir or build_demo_tokenizer())
    prompt_format, system = run.prompt
    items = read_heldout(data_root)[:limit]
    with distributed_session(seed=0):
        model = build_model(model_cfg, ParallelConfig()).chunks[0]
        load_checkpoint(run.folder, [model], weights_only=True)
        model.eval()
        correct, per_task, totals = 0, Counter(), Counter()
        for item in tqdm(items, desc="megatron eval", file=sys.stderr, mininterval=2):
            prompt, pixels = encode_prompt([("user", item.question)], [item.image], tok,
                                           model_cfg.tokens_per_tile, model_cfg.vision.image_size, run.max_tiles,
                                           system=system, prompt_format=prompt_format)
            out = greedy_generate(model, list(prompt), pixels, max_new_tokens,
                                  {tok.im_end_id, tok.eod_id}, model_cfg.language.vocab_size)
            answer = tok.decode(out).strip()
            ok = answer == item.answer
            correct += ok
            per_task[item.task] += ok
            totals[item.task] += 1
    return {"accuracy": correct / max(1, len(items)), "correct": correct, "total": len(items),
            "per_task": {t: per_task[t] / totals[t] for t in totals}, "iteration": run.iteration,
            "prompt_format": prompt_format}


def main(argv=None) -> int:
    args = _args(argv)
    result = evaluate(args.checkpoint, args.data_root, args.limit, args.max_new_tokens)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
