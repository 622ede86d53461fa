"""Held-out exact-match accuracy of a training checkpoint (megatron model), e.g. for the demo.

``python -m nvlm_train.cli.demo_eval megatron --checkpoint RUN/checkpoints --data-root DEMO_DATA``
prints it as one JSON line: accuracy, correct, total, per-task accuracy. The checkpoint may have been
saved at any TP/PP: it is loaded at TP1/PP1 in this process (dist checkpoints reshard) and run by
the generation engine (batched, KV cache, the checkpoint's prompt preset), greedy.
"""

from __future__ import annotations

import sys
from collections import Counter

from tqdm import tqdm


def evaluate(checkpoint: str, data_root: str, limit: int | None = None, max_new_tokens: int = 6,
             batch_size: int = 8) -> dict:
    from nvlm_train.data.synth import read_heldout
    from nvlm_train.inference.engine import GenerationEngine, GenerationRequest, SamplingConfig
    from nvlm_train.runtime.session import distributed_session

    items = read_heldout(data_root)[:limit]
    requests = [GenerationRequest(str(i), [("user", item.question)], [item.image]) for i, item in enumerate(items)]
    sampling = SamplingConfig(max_new_tokens=max_new_tokens)
    correct, per_task, totals = 0, Counter(), Counter()
    with distributed_session(seed=0):
        engine = GenerationEngine.from_checkpoint(checkpoint, batch_size=batch_size)
        answers = []
        for start in tqdm(range(0, len(requests), batch_size), desc="megatron eval", file=sys.stderr, mininterval=2):
            answers += engine.generate(requests[start:start + batch_size], sampling)
    for item, answer in zip(items, answers):
        ok = answer.text == item.answer
        correct += ok
        per_task[item.task] += ok
        totals[item.task] += 1
    run = engine.saved_run
    return {"accuracy": correct / max(1, len(items)), "correct": correct, "total": len(items),
            "per_task": {t: per_task[t] / totals[t] for t in totals}, "iteration": run.iteration,
            "prompt_format": run.prompt[0]}
