"""NVLM-D 1.0 72B's published scores, for comparison rows in results.md.

Source: the NVLM-D-72B model card (huggingface.co/nvidia/NVLM-D-72B, "Benchmark Results", as of
September 17th, 2024): the "Vision-language Benchmarks" table (MMMU is its val number) and the
"Text-only Benchmarks" table, each with a Huggingface row and a Megatron row.
"""

from __future__ import annotations

from nvlm_train.evaluation.benchmark_names import Benchmark as B

CARD_SCORES: dict[str, dict[B, float]] = {
    "NVLM-D 1.0 72B (Huggingface), model card": {
        B.MMMU: 58.7, B.MATHVISTA: 65.2, B.OCRBENCH: 852, B.AI2D: 94.2, B.CHARTQA: 86.0, B.DOCVQA: 92.6,
        B.TEXTVQA: 82.6, B.REALWORLDQA: 69.5, B.VQAV2: 85.4,
        B.MMLU: 81.7, B.GSM8K: 93.2, B.MATH: 73.1, B.HUMANEVAL: 89.0,
    },
    "NVLM-D 1.0 72B (Megatron), model card": {
        B.MMMU: 59.7, B.MATHVISTA: 65.2, B.OCRBENCH: 853, B.AI2D: 94.2, B.CHARTQA: 86.0, B.DOCVQA: 92.6,
        B.TEXTVQA: 82.1, B.REALWORLDQA: 69.7, B.VQAV2: 85.4,
        B.MMLU: 82.0, B.GSM8K: 92.9, B.MATH: 73.1, B.HUMANEVAL: 88.4,
    },
}
