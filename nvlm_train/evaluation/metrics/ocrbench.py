"""OCRBench scoring: per-category containment rules, totalled out of 1000.

Reference: Liu et al., "OCRBench" (arXiv:2305.07895) and its scorer (github.com/Yuliang-Liu/
MultimodalOCR, ``OCRBench/scripts``): a reply scores 1 when a ground-truth answer is contained in it;
for Handwritten Mathematical Expression Recognition (``HME100k``) both sides have all whitespace
removed first (case kept), elsewhere both are lower-cased and stripped and the reply's newlines become
spaces. The 1000 questions fall in 10 types reported in 5 groups; the score is the number correct.
"""

from __future__ import annotations

OCRBENCH_SIZE = 1000
TEXT_RECOGNITION = ("Regular Text Recognition", "Irregular Text Recognition", "Artistic Text Recognition",
                    "Handwriting Recognition", "Digit String Recognition", "Non-Semantic Text Recognition")
GROUPS = {
    **{t: "Text Recognition" for t in TEXT_RECOGNITION},
    "Scene Text-centric VQA": "Scene Text-centric VQA",
    "Doc-oriented VQA": "Doc-oriented VQA",
    "Key Information Extraction": "Key Information Extraction",
    "Handwritten Mathematical Expression Recognition": "Handwritten Mathematical Expression Recognition",
}


def ocrbench_correct(prediction: str, gt_answers: list[str], dataset_name: str = "",
                     category: str = "") -> bool:
    """The OCRBench rule for one question."""
    if dataset_name == "HME100k" or category == "Handwritten Mathematical Expression Recognition":
        pred = "".join(prediction.split())
        return any("".join(gt.split()) in pred for gt in gt_answers)
    pred = prediction.lower().strip().replace("\n", " ")
    return any(gt.lower().strip().replace("\n", " ") in pred for gt in gt_answers)


def ocrbench_group(category: str) -> str:
    """The reported group of a question type (unknown types report as themselves)."""
    return GROUPS.get(category, category or "other")
