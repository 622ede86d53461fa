"""Multiple-choice answers (AI2D, RealWorldQA, MMLU, MMMU's multiple-choice questions).

Reference: the MMMU scorer, ``parse_multi_choice_response`` in github.com/MMMU-Benchmark/MMMU
(``mmmu/utils/eval_utils.py``), which Megatron-LM's NVLM evaluation also uses: strip surrounding
punctuation; look for "(A)"; else for "A " (a letter followed by a space, so "B." and "the answer is
B" count); else, for replies longer than five words, for an option's text; when several letters
appear, the last one mentioned wins. MMMU then guesses at random when nothing is found; we count it
wrong (``None``) so scores are deterministic.
"""

from __future__ import annotations

import string

_STRIP = ",.!?;:'"


def choice_letters(n: int) -> list[str]:
    return list(string.ascii_uppercase[:n])


def parse_choice(response: str, choices: list[str]) -> str | None:
    """The option letter a free-form reply picks among ``choices`` (option texts in letter order)."""
    letters = choice_letters(len(choices))
    index2ans = dict(zip(letters, choices))
    text = response.strip()
    for ch in _STRIP:
        text = text.strip(ch)
    text = f" {text} "
    candidates = [c for c in letters if f"({c})" in text]
    bracketed = bool(candidates)
    if not candidates:
        candidates = [c for c in letters if f"{c} " in text]
    by_text = False
    if not candidates and len(text.split()) > 5:
        candidates = [c for c, ans in index2ans.items() if ans and ans.lower() in text.lower()]
        by_text = bool(candidates)
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0]

    def position(c: str) -> int:
        if by_text:
            return text.lower().rfind(index2ans[c].lower())
        return text.rfind(f"({c})") if bracketed else text.rfind(f" {c} ")

    return max(candidates, key=position)


def choice_accuracy(response: str, choices: list[str], answer_letter: str) -> float:
    return float(parse_choice(response, choices) == answer_letter.strip().upper())
