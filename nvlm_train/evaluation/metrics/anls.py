"""ANLS, Average Normalized Levenshtein Similarity (DocVQA).

Reference: Biten et al., "Scene Text Visual Question Answering" (ICCV 2019), section 4, and the
DocVQA evaluation (rrc.cvc.uab.es/?ch=17, Mathew et al. WACV 2021): per question the score is
``max over ground truths of (1 - NL)`` if ``NL < tau`` else 0, with ``NL`` the Levenshtein distance of
the lower-cased, whitespace-stripped strings divided by the longer length, and ``tau = 0.5``.
"""

from __future__ import annotations

ANLS_THRESHOLD = 0.5


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions), two-row dynamic programming."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def normalized_levenshtein(a: str, b: str) -> float:
    """Distance / longer length; two empty strings are identical (0)."""
    longest = max(len(a), len(b))
    return 0.0 if longest == 0 else levenshtein(a, b) / longest


def anls(prediction: str, gt_answers: list[str], threshold: float = ANLS_THRESHOLD) -> float:
    """The ANLS of one prediction, in [0, 1]."""
    pred = " ".join(prediction.strip().lower().split())
    best = 0.0
    for gt in gt_answers:
        nl = normalized_levenshtein(pred, " ".join(gt.strip().lower().split()))
        best = max(best, 1.0 - nl if nl < threshold else 0.0)
    return best
