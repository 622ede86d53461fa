"""MathVista answers by rules (no LLM judge), reporting which rule extracted each answer.

Reference: MathVista's scorer (github.com/lupantech/MathVista, ``evaluation/calculate_score.py``,
``normalize_extracted_answer`` and ``safe_equal``): multiple-choice extractions are mapped to the
most similar option text (edit distance), integers compared as ``int``, floats rounded to the
question's ``precision``, lists compared element-wise. The official *extraction* step asks GPT-4;
here it is rules instead, in order: ``direct`` (the reply is the answer), ``letter`` (an option
letter, as the MMMU parser reads it), ``choice_text`` (an option's text in the reply),
``answer_is`` (the text after "answer is"/"Answer:"), ``last_number`` (the last number in the
reply), ``none``. The score reports how often each rule fired.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from nvlm_train.evaluation.metrics.anls import levenshtein
from nvlm_train.evaluation.metrics.choice import parse_choice

_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")
_ANSWER_IS = re.compile(r"(?:answer is|answer:)\s*(.+)", re.IGNORECASE)


class Extraction(StrEnum):
    DIRECT = "direct"
    LETTER = "letter"
    CHOICE_TEXT = "choice_text"
    ANSWER_IS = "answer_is"
    LAST_NUMBER = "last_number"
    NONE = "none"


@dataclass(frozen=True)
class MathVistaQuestion:
    question_type: str  # "multi_choice" | "free_form"
    answer_type: str  # "text" | "integer" | "float" | "list"
    answer: str
    choices: tuple[str, ...] = ()
    precision: int | None = None


def _as_number(text: str) -> float | None:
    try:
        return float(text.replace(",", "").strip().rstrip("."))
    except ValueError:
        return None


def extract_answer(response: str, q: MathVistaQuestion) -> tuple[str | None, Extraction]:
    """(extracted answer text, the rule that found it)."""
    text = response.strip()
    if q.question_type == "multi_choice" and q.choices:
        if text in q.choices:
            return text, Extraction.DIRECT
        letter = parse_choice(text, list(q.choices))
        if letter is not None:
            return q.choices[ord(letter) - ord("A")], Extraction.LETTER
        hits = [c for c in q.choices if c and c.lower() in text.lower()]
        if hits:
            return max(hits, key=len), Extraction.CHOICE_TEXT
        return None, Extraction.NONE
    if q.answer_type in ("integer", "float") and _as_number(text) is not None:
        return text, Extraction.DIRECT
    if q.answer_type not in ("integer", "float") and text and len(text.split()) <= 3:
        return text, Extraction.DIRECT
    match = _ANSWER_IS.search(text)
    if match:
        tail = match.group(1).strip().rstrip(".")
        if q.answer_type not in ("integer", "float") or _as_number(tail) is not None:
            return tail, Extraction.ANSWER_IS
    numbers = _NUMBER.findall(text)
    if numbers and q.answer_type in ("integer", "float", "list"):
        return numbers[-1], Extraction.LAST_NUMBER
    return None, Extraction.NONE


def normalize_extracted(extraction: str | None, q: MathVistaQuestion) -> str | None:
    """MathVista's normalisation of an extraction before comparing with the answer."""
    if extraction is None:
        return None
    if q.question_type == "multi_choice" and q.choices:
        return min(q.choices, key=lambda c: levenshtein(extraction.strip(), c))
    if q.answer_type == "integer":
        number = _as_number(extraction)
        return None if number is None else str(int(number))
    if q.answer_type == "float":
        number = _as_number(extraction)
        return None if number is None else str(round(number, q.precision or 0))
    if q.answer_type == "list":
        return str([_as_number(x) for x in _NUMBER.findall(extraction)])
    return extraction.strip()


def _normalize_answer(q: MathVistaQuestion) -> str:
    if q.question_type == "multi_choice":
        return q.answer.strip()
    if q.answer_type == "integer":
        return str(int(float(q.answer)))
    if q.answer_type == "float":
        return str(round(float(q.answer), q.precision or 0))
    if q.answer_type == "list":
        return str([_as_number(x) for x in _NUMBER.findall(q.answer)])
    return q.answer.strip()


def mathvista_score(response: str, q: MathVistaQuestion) -> tuple[float, Extraction]:
    """(1.0 or 0.0, extraction rule used). Text answers compare case-insensitively."""
    extracted, how = extract_answer(response, q)
    normalised = normalize_extracted(extracted, q)
    if normalised is None:
        return 0.0, how
    gold = _normalize_answer(q)
    same = normalised.lower() == gold.lower() if q.answer_type == "text" else normalised == gold
    return float(same), how
