"""One benchmark question as every reader produces it and every prompt and scorer consumes it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class EvalSample:
    id: str
    question: str  # the benchmark's question text (options not yet added)
    answers: list[str]  # ground truths: 10 human answers (VQA), one letter (multiple choice), ...
    images: list[Any] = field(default_factory=list)  # LazyImage: checked when read, decoded when asked
    choices: list[str] = field(default_factory=list)  # option texts in letter order (A, B, ...)
    category: str = ""  # what per-category scores group by
    meta: dict[str, Any] = field(default_factory=dict)  # benchmark-specific fields (question_type, test, ...)
