"""MMMU open-answer scoring (its multiple-choice questions use ``metrics.choice``).

Reference: ``parse_open_response`` / ``eval_open`` in github.com/MMMU-Benchmark/MMMU
(``mmmu/utils/eval_utils.py``): split the reply into sentences, keep what follows an indicator
("could be", "so", "is", "thus", "therefore", "final", "answer", "result") in each (the last sentence
also after "="), collect those pieces, the numbers found in them and the normalised numbers; the reply
is correct when a ground truth number equals one of the numbers, or a ground truth string is
contained in one of the (lower-cased) pieces.
"""

from __future__ import annotations

import re

_INDICATORS = ["could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result "]


def _to_number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def normalize_str(text: str) -> list:
    """A number becomes [float rounded to 2 places]; other text [its lower-cased form] (and, for one
    character, its spaced form too, so "a" does not match inside words)."""
    text = text.strip()
    number = _to_number(text)
    if number is not None:
        return [round(number, 2)]
    text = text.lower()
    return [" " + text, text + " "] if len(text) == 1 else [text]


def extract_numbers(text: str) -> list[str]:
    """Numbers with thousands commas, in scientific notation and plain ones."""
    commas = re.findall(r"-?\b\d{1,3}(?:,\d{3})+\b", text)
    scientific = re.findall(r"-?\d+(?:\.\d+)?[eE][+-]?\d+", text)
    plain = re.findall(r"-?(?:\d+\.\d+|\.\d+|\d+)(?![eE][+-]?\d+)(?![,\d])", text)
    return commas + scientific + plain


def parse_open_response(response: str) -> list:
    """The candidate answers MMMU reads out of an open reply (normalised)."""
    sentences = [s for s in re.split(r"\.\s(?=[A-Z])|\n", response.strip()) if s.strip()]
    pieces = []
    for i, sentence in enumerate(sentences):
        sentence = sentence.strip().strip(".").lower()
        indicators = _INDICATORS + (["="] if i == len(sentences) - 1 else [])
        shortest = None
        for ind in indicators:
            if ind in sentence:
                tail = sentence.split(ind)[-1].strip()
                if shortest is None or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest not in (":", ",", ".", "!", "?", ";", "'"):
            pieces.append(shortest)
    if not pieces:
        pieces = [response.strip()]
    candidates = list(pieces)
    for piece in pieces:
        candidates += extract_numbers(piece)
    normalised = []
    for cand in candidates:
        normalised += normalize_str(cand)
    seen, out = set(), []
    for item in normalised:
        key = (type(item), item)
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def eval_open(gt_answers: list[str], predictions: list) -> bool:
    norm_gts = []
    for gt in gt_answers:
        norm_gts += normalize_str(gt)
    for pred in predictions:
        if isinstance(pred, str):
            if any(isinstance(g, str) and g in pred for g in norm_gts):
                return True
        elif pred in [g for g in norm_gts if not isinstance(g, str)]:
            return True
    return False


def mmmu_open_accuracy(response: str, gt_answers: list[str]) -> float:
    return float(eval_open(gt_answers, parse_open_response(response)))
