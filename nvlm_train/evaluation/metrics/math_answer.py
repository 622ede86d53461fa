"""MATH final-answer accuracy with the benchmark's equivalence rules.

Reference: Hendrycks et al., "Measuring Mathematical Problem Solving With the MATH Dataset"
(NeurIPS 2021) and github.com/hendrycks/math (``modeling/math_equivalence.py``): the answer is the
content of the last ``\\boxed{...}`` (or ``\\fbox``); two answers are equivalent when equal after
the normalisation there: no linebreaks, ``\\!``, ``\\left``/``\\right``, degrees, dollars, units in
``\\text{ }``, percent signs or spaces; ``tfrac``/``dfrac`` -> ``frac``; a leading "0" added to ".5";
"x = 5" -> "5" for short left sides; ``\\sqrt2`` -> ``\\sqrt{2}``; ``\\frac12`` -> ``\\frac{1}{2}``;
"0.5" -> ``\\frac{1}{2}``; "a/b" of integers -> ``\\frac{a}{b}``.
"""

from __future__ import annotations

import re


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{..}``/``\\fbox{..}`` (braces balanced), or of ``\\boxed x``."""
    idx = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if idx < 0:
        return None
    rest = text[idx:]
    if rest.startswith("\\boxed ") :
        return rest[len("\\boxed "):].split("$")[0].strip()
    start = rest.find("{")
    if start < 0:
        return None
    depth = 0
    for i, ch in enumerate(rest[start:], start):
        depth += ch == "{"
        depth -= ch == "}"
        if depth == 0:
            return rest[start + 1:i]
    return None


def extract_math_answer(response: str) -> str | None:
    """The boxed answer, else the text after "answer is", else None."""
    boxed = last_boxed(response)
    if boxed is not None:
        return boxed
    match = re.search(r"answer is[:\s]*\$?([^\n$]+?)\$?\s*\.?\s*$", response.strip(), re.IGNORECASE)
    return match.group(1).strip() if match else None


def _fix_fracs(text: str) -> str:
    parts = text.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        out += "\\frac"
        if part.startswith("{") or len(part) < 2:
            out += part
            continue
        a, b, rest = part[0], part[1], part[2:]
        if b == "{":
            out += "{" + a + "}" + b + rest
        else:
            out += "{" + a + "}{" + b + "}" + rest
    return out


def _fix_a_slash_b(text: str) -> str:
    if text.count("/") != 1:
        return text
    a, b = text.split("/")
    try:
        return f"\\frac{{{int(a)}}}{{{int(b)}}}"
    except ValueError:
        return text


def _fix_sqrt(text: str) -> str:
    return re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", text)


def _remove_right_units(text: str) -> str:
    if "\\text{ " in text:
        return text.split("\\text{ ")[0]
    return text


def strip_math_string(text: str) -> str:
    """MATH's ``_strip_string`` normalisation."""
    s = text.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "")
    s = _remove_right_units(s)
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    if len(s.split("=")) == 2 and len(s.split("=")[0]) <= 2:
        s = s.split("=")[1]
    s = _fix_sqrt(s)
    s = s.replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _fix_a_slash_b(s)


def is_equiv(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    try:
        return strip_math_string(a) == strip_math_string(b)
    except Exception:  # noqa: BLE001 - the reference falls back to plain equality on any failure
        return a == b


def math_accuracy(response: str, solution_or_answer: str) -> float:
    """1.0 when the reply's final answer is equivalent to the gold one (a solution's last box, or
    the gold answer itself)."""
    gold = last_boxed(solution_or_answer)
    gold = solution_or_answer if gold is None else gold
    pred = extract_math_answer(response)
    return float(pred is not None and is_equiv(pred, gold))
