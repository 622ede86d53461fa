"""Which metric scores which benchmark, and how per-sample scores add up to the card's number.

Every benchmark is a mean over samples of a per-sample score in [0, 1], printed in percent, except
OCRBench: the number of correct answers out of 1000 (mean x 1000; its categories are correct counts
per reported group). MathVista also reports how many answers each extraction rule found.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from nvlm_train.evaluation.benchmark_names import Benchmark
from nvlm_train.evaluation.metrics.anls import anls
from nvlm_train.evaluation.metrics.choice import parse_choice
from nvlm_train.evaluation.metrics.gsm8k import gsm8k_accuracy
from nvlm_train.evaluation.metrics.math_answer import math_accuracy
from nvlm_train.evaluation.metrics.mathvista import MathVistaQuestion, mathvista_score
from nvlm_train.evaluation.metrics.mmmu import mmmu_open_accuracy
from nvlm_train.evaluation.metrics.ocrbench import OCRBENCH_SIZE, ocrbench_correct, ocrbench_group
from nvlm_train.evaluation.metrics.relaxed import relaxed_accuracy
from nvlm_train.evaluation.metrics.vqa import vqa_accuracy
from nvlm_train.evaluation.samples import EvalSample
from nvlm_train.evaluation.sandbox import check_sandbox, run_program


@dataclass
class SampleScore:
    score: float  # in [0, 1]
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the parsed letter, the extraction rule


def _choice(sample: EvalSample, reply: str) -> SampleScore:
    if not sample.choices:  # an open question inside a multiple-choice benchmark
        return SampleScore(vqa_accuracy(reply, sample.answers))
    letter = parse_choice(reply, sample.choices)
    return SampleScore(float(letter == sample.answers[0]), {"parsed": letter})


def _mmmu(sample: EvalSample, reply: str) -> SampleScore:
    if sample.meta.get("question_type") == "multiple-choice":
        return _choice(sample, reply)
    return SampleScore(mmmu_open_accuracy(reply, sample.answers))


def _mathvista(sample: EvalSample, reply: str) -> SampleScore:
    q = MathVistaQuestion(sample.meta.get("question_type", "free_form"), sample.meta.get("answer_type", "text"),
                          sample.answers[0], tuple(sample.choices), sample.meta.get("precision"))
    score, how = mathvista_score(reply, q)
    return SampleScore(score, {"extraction": how.value})


def _ocrbench(sample: EvalSample, reply: str) -> SampleScore:
    ok = ocrbench_correct(reply, sample.answers, sample.meta.get("dataset_name", ""), sample.category)
    return SampleScore(float(ok))


def humaneval_program(sample: EvalSample, reply: str) -> str:
    """The program that tests a completion: the reply's code (its first ```python block, or all of it)
    appended to the prompt -- a full function redefines the prompt's, a bare body continues it -- then
    the benchmark's ``check(entry_point)``."""
    blocks = re.findall(r"```(?:python|py)?\n(.*?)```", reply, re.DOTALL)
    code = blocks[0] if blocks else reply
    entry = sample.meta["entry_point"]
    if re.search(rf"^\s*def\s+{re.escape(entry)}\s*\(", code, re.MULTILINE):
        program = sample.question + "    pass\n\n" + code
    else:
        program = sample.question + code
    return f"{program}\n\n{sample.meta['test']}\n\ncheck({entry})\n"


def _humaneval(sample: EvalSample, reply: str) -> SampleScore:
    result = run_program(humaneval_program(sample, reply))
    return SampleScore(float(result.passed), {"outcome": result.outcome.value, "detail": result.detail[:300]})


SCORERS = {
    Benchmark.MMMU: _mmmu,
    Benchmark.MATHVISTA: _mathvista,
    Benchmark.OCRBENCH: _ocrbench,
    Benchmark.AI2D: _choice,
    Benchmark.CHARTQA: lambda s, r: SampleScore(relaxed_accuracy(r, s.answers)),
    Benchmark.DOCVQA: lambda s, r: SampleScore(anls(r, s.answers)),
    Benchmark.TEXTVQA: lambda s, r: SampleScore(vqa_accuracy(r, s.answers)),
    Benchmark.REALWORLDQA: _choice,
    Benchmark.VQAV2: lambda s, r: SampleScore(vqa_accuracy(r, s.answers)),
    Benchmark.MMLU: _choice,
    Benchmark.GSM8K: lambda s, r: SampleScore(gsm8k_accuracy(r, s.answers[0])),
    Benchmark.MATH: lambda s, r: SampleScore(math_accuracy(r, s.answers[0])),
    Benchmark.HUMANEVAL: _humaneval,
    Benchmark.DEMO: lambda s, r: SampleScore(float(r.strip() == s.answers[0])),
}


def prepare(benchmark: Benchmark) -> None:
    """Checks a benchmark needs before any generation (HumanEval: refuse without a sandbox)."""
    if benchmark is Benchmark.HUMANEVAL:
        check_sandbox()


def score_sample(benchmark: Benchmark, sample: EvalSample, reply: str) -> SampleScore:
    return SCORERS[benchmark](sample, reply)


def unit(benchmark: Benchmark) -> float:
    return float(OCRBENCH_SIZE) if benchmark is Benchmark.OCRBENCH else 100.0


def aggregate(benchmark: Benchmark, rows: list[dict]) -> dict[str, Any]:
    """``{"score", "n", "categories"}`` (+ ``"extraction"`` for MathVista) from prediction rows
    (each with ``score`` and ``category``)."""
    n = len(rows)
    total = sum(r["score"] for r in rows)
    out: dict[str, Any] = {"score": round(unit(benchmark) * total / n, 2) if n else 0.0, "n": n}
    groups: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        key = ocrbench_group(r["category"]) if benchmark is Benchmark.OCRBENCH else r["category"]
        if key:
            groups[key].append(r["score"])
    if benchmark is Benchmark.OCRBENCH:
        out["categories"] = {k: int(sum(v)) for k, v in sorted(groups.items())}
    else:
        out["categories"] = {k: round(100.0 * sum(v) / len(v), 2) for k, v in sorted(groups.items())}
    if benchmark is Benchmark.MATHVISTA:
        out["extraction"] = dict(Counter(r.get("extra", {}).get("extraction", "none") for r in rows))
    return out
