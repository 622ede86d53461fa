"""GSM8K final-answer accuracy.

Reference: Cobbe et al., "Training Verifiers to Solve Math Word Problems" (arXiv:2110.14168) and
github.com/openai/grade-school-math (``dataset.py``): the gold final answer follows ``####`` in the
solution; a reply is correct when its final number equals it. The reply's final number is the one
after "The answer is" / "####" when present, else the last number in the reply; thousands commas,
"$" and a trailing ".0" are removed before comparing.
"""

from __future__ import annotations

import re

_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")
_MARKER = re.compile(r"(?:####|the (?:final )?answer is[:\s]*)", re.IGNORECASE)


def normalize_number(text: str) -> str:
    text = text.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        value = float(text)
    except ValueError:
        return text
    return str(int(value)) if value == int(value) else repr(value)


def gold_answer(solution: str) -> str:
    """The number after ``####`` in a GSM8K solution."""
    return normalize_number(solution.split("####")[-1].strip())


def final_number(response: str) -> str | None:
    markers = list(_MARKER.finditer(response))
    if markers:
        after = _NUMBER.findall(response[markers[-1].end():])
        if after:
            return normalize_number(after[0])
    numbers = _NUMBER.findall(response)
    return normalize_number(numbers[-1]) if numbers else None


def gsm8k_accuracy(response: str, gold: str) -> float:
    pred = final_number(response)
    return float(pred is not None and pred == normalize_number(gold))
