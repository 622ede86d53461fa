"""The benchmarks ``nvlm-eval`` knows (the model card's two tables, plus the demo's held-out set)."""

from __future__ import annotations

from enum import StrEnum


class Benchmark(StrEnum):
    MMMU = "mmmu"
    MATHVISTA = "mathvista"
    OCRBENCH = "ocrbench"
    AI2D = "ai2d"
    CHARTQA = "chartqa"
    DOCVQA = "docvqa"
    TEXTVQA = "textvqa"
    REALWORLDQA = "realworldqa"
    VQAV2 = "vqav2"
    MMLU = "mmlu"
    GSM8K = "gsm8k"
    MATH = "math"
    HUMANEVAL = "humaneval"
    DEMO = "demo"


VISION = (Benchmark.MMMU, Benchmark.MATHVISTA, Benchmark.OCRBENCH, Benchmark.AI2D, Benchmark.CHARTQA,
          Benchmark.DOCVQA, Benchmark.TEXTVQA, Benchmark.REALWORLDQA, Benchmark.VQAV2)
TEXT = (Benchmark.MMLU, Benchmark.GSM8K, Benchmark.MATH, Benchmark.HUMANEVAL)
# Column titles as the card prints them.
TITLES = {Benchmark.MMMU: "MMMU (val)", Benchmark.MATHVISTA: "MathVista", Benchmark.OCRBENCH: "OCRBench",
          Benchmark.AI2D: "AI2D", Benchmark.CHARTQA: "ChartQA", Benchmark.DOCVQA: "DocVQA",
          Benchmark.TEXTVQA: "TextVQA", Benchmark.REALWORLDQA: "RealWorldQA", Benchmark.VQAV2: "VQAv2",
          Benchmark.MMLU: "MMLU", Benchmark.GSM8K: "GSM8K", Benchmark.MATH: "MATH",
          Benchmark.HUMANEVAL: "HumanEval", Benchmark.DEMO: "demo"}
