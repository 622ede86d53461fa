"""ChartQA relaxed accuracy.

Reference: Masry et al., "ChartQA" (ACL Findings 2022), section 5: a numeric answer is correct
within 5% relative error of the gold number, others need an exact match; the reference
implementation is ``relaxed_correctness`` in google-research/pix2struct (``metrics.py``), which
reads "12%" as 0.12 and compares non-numbers case-insensitively.
"""

from __future__ import annotations

RELAXED_TOLERANCE = 0.05


def _to_float(text: str) -> float | None:
    text = text.strip()
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_correctness(prediction: str, target: str, tolerance: float = RELAXED_TOLERANCE) -> bool:
    """True when ``prediction`` is within ``tolerance`` relative error of a numeric ``target`` (bounds
    included), or equals a non-numeric one ignoring case. A zero target needs an exact number."""
    pred_f, target_f = _to_float(prediction), _to_float(target)
    if pred_f is not None and target_f is not None:
        if target_f == 0:
            return pred_f == 0
        return abs(pred_f - target_f) / abs(target_f) <= tolerance + 1e-12
    return prediction.strip().lower() == target.strip().lower()


def relaxed_accuracy(prediction: str, gt_answers: list[str]) -> float:
    """1.0 when the prediction is relaxed-correct for any ground truth (ChartQA has one)."""
    return float(any(relaxed_correctness(prediction, gt) for gt in gt_answers))
