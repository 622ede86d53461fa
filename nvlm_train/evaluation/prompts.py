"""How each benchmark is asked: one table, as NVLM-D's evaluation did it.

Reference for the vision benchmarks: Megatron-LM's NVLM evaluation (``examples/multimodal/
run_text_generation.py``, ``get_conversation``, and ``evaluation/evaluation_datasets.py``), the code
the card's Megatron numbers come from: its system turns, its instruction suffixes, options written
``A. text`` one per line followed by "Answer with the option's letter from the given choices
directly.", MathVista's ``query`` with ``Hint: `` removed for free-form questions, MMMU's
"vlmevalkit" style (``<image k><image>`` in front; tiles shared out between several images) and up
to 6 tiles + thumbnail. The card does not publish its text-benchmark prompts; ours are zero-shot
and stated here (MMLU: the option letter; GSM8K/MATH: reasoning then "The answer is"/``\\boxed``;
HumanEval: complete the function).
"""

from __future__ import annotations

from dataclasses import dataclass

from nvlm_train.evaluation.benchmark_names import Benchmark
from nvlm_train.evaluation.samples import EvalSample

FOLLOW = "Follow the user's instruction and answer questions."
ANSWER = "Answer the questions."
PRESET = "preset"  # the model's own prompt preset (what the checkpoint or export was trained with)
SHORT = "Answer the question using a single word or phrase."
SHORT_OR_NUMBER = "Answer the question using a single word, phrase, or number."
LETTER = "Answer with the option's letter from the given choices directly."
MAX_TILES = 6


@dataclass(frozen=True)
class PromptSpec:
    system: str | None  # PRESET, None (no system turn) or the text
    suffix: str  # appended on its own line after the question (and options)
    max_new_tokens: int
    max_tiles: int | None = MAX_TILES  # + thumbnail when more than one tile; None: the model's own setting


PROMPTS: dict[Benchmark, PromptSpec] = {
    Benchmark.MMMU: PromptSpec(ANSWER, LETTER, 64),  # open questions: "Answer the question directly."
    Benchmark.MATHVISTA: PromptSpec("You are math expert. Use your math knowledge to calculate the answer.", "",
                                    512),
    Benchmark.OCRBENCH: PromptSpec(FOLLOW, "", 70),
    Benchmark.AI2D: PromptSpec(FOLLOW, LETTER, 10),
    Benchmark.CHARTQA: PromptSpec(FOLLOW, SHORT, 20),
    Benchmark.DOCVQA: PromptSpec(FOLLOW, SHORT_OR_NUMBER, 32),
    Benchmark.TEXTVQA: PromptSpec(FOLLOW, SHORT_OR_NUMBER, 10),
    Benchmark.REALWORLDQA: PromptSpec(FOLLOW, LETTER, 10),
    Benchmark.VQAV2: PromptSpec(FOLLOW, SHORT, 10),
    Benchmark.MMLU: PromptSpec(ANSWER, LETTER, 8),
    Benchmark.GSM8K: PromptSpec(ANSWER, "Solve the problem step by step. End with \"The answer is N.\" where N is "
                                        "the final number.", 512),
    Benchmark.MATH: PromptSpec(ANSWER, "Solve the problem step by step and put the final answer in \\boxed{}.",
                               1024),
    Benchmark.HUMANEVAL: PromptSpec(ANSWER, "Complete the Python function above. Reply with the whole function "
                                            "in one ```python code block.", 512),
    # Exactly what inference/evaluate.py asks, at the tiles the checkpoint was trained with.
    Benchmark.DEMO: PromptSpec(PRESET, "", 6, max_tiles=None),
}


def _options(choices: list[str]) -> str:
    return "".join(f"{chr(ord('A') + i)}. {c}\n" for i, c in enumerate(choices))


def user_text(benchmark: Benchmark, sample: EvalSample) -> str:
    """The user turn's text, ``<image>`` placeholders included."""
    spec = PROMPTS[benchmark]
    q = sample.question.strip()
    if benchmark is Benchmark.MMMU:
        if sample.meta.get("question_type") == "multiple-choice":
            hint = f"Hint: {sample.meta['hint']}\n" if sample.meta.get("hint") else ""
            body = f"{q}\n{hint}{_options(sample.choices)}{spec.suffix}"
        else:
            body = f"{q}\nAnswer the question directly."
        tags = " ".join(f"<image {i + 1}><image>" for i in range(len(sample.images)))
        return f"{tags}\n{body}" if tags else body
    if benchmark is Benchmark.MATHVISTA:
        if sample.meta.get("question_type") == "multi_choice" and sample.choices:
            body = f"{q}\n{_options(sample.choices)}{LETTER}"
        else:
            body = (sample.meta.get("query") or q).replace("Hint: ", "")
    elif benchmark in (Benchmark.AI2D, Benchmark.REALWORLDQA, Benchmark.MMLU):
        if sample.choices:
            body = f"{q}\n{_options(sample.choices)}{LETTER}"
        else:  # RealWorldQA's few open questions
            body = f"{q}\n{SHORT}"
        if benchmark is Benchmark.MMLU and sample.category:
            subject = sample.category.replace("_", " ")
            body = f"The following is a multiple choice question about {subject}.\n\n{body}"
    elif benchmark is Benchmark.HUMANEVAL:
        body = f"```python\n{sample.question}```\n{spec.suffix}"
    else:
        body = f"{q}\n{spec.suffix}" if spec.suffix else q
    if sample.images and benchmark is not Benchmark.MMMU and "<image>" not in body:  # the demo's carry theirs
        return "<image>\n" * len(sample.images) + body
    return body


def tiles_per_image(benchmark: Benchmark, sample: EvalSample, max_tiles: int | None = None) -> int | None:
    """Tiles per image: the benchmark's maximum (or ``max_tiles``) shared out between a sample's
    images (MMMU); None: the model's own setting."""
    limit = max_tiles or PROMPTS[benchmark].max_tiles
    return None if limit is None else max(1, limit // max(1, len(sample.images)))
