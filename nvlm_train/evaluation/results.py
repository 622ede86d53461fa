"""The files ``nvlm-eval`` leaves in ``--out``.

``results.json``: ``{benchmark: {"score", "n", "categories", ...}}`` for the model evaluated there,
merged over runs (a rerun of one benchmark replaces only its entry), plus ``"_model"``.
``results.md``: the card's two tables (vision-language columns, text-only columns; one row per
model; "-" where not run), optionally with the card's NVLM-D 72B rows, then per-category scores.
``predictions.jsonl``: every scored sample of every benchmark in results.json, in sample order
(kept per benchmark in ``predictions/<benchmark>.jsonl``).
"""

from __future__ import annotations

import json
from pathlib import Path

from nvlm_train.evaluation.benchmark_names import TEXT, TITLES, VISION, Benchmark
from nvlm_train.evaluation.card import CARD_SCORES

MODEL_KEY = "_model"


def update_results(out: Path, label: str, summaries: dict[Benchmark, dict]) -> dict:
    path = Path(out) / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    if results.get(MODEL_KEY) not in (None, label):
        results = {}  # another model's results: the caches already refused mixing; start the table anew
    results[MODEL_KEY] = label
    for bench, summary in summaries.items():
        results[bench.value] = summary
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return results


def _fmt(bench: Benchmark, value) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if bench is Benchmark.OCRBENCH else f"{value:.1f}"


def _table(columns: tuple[Benchmark, ...], rows: list[tuple[str, dict]]) -> list[str]:
    head = "| Model | " + " | ".join(TITLES[b] for b in columns) + " |"
    lines = [head, "|" + "---|" * (len(columns) + 1)]
    for name, scores in rows:
        lines.append(f"| {name} | " + " | ".join(_fmt(b, scores.get(b)) for b in columns) + " |")
    return lines


def render_markdown(results: dict, compare_card: bool = False) -> str:
    label = results.get(MODEL_KEY, "model")
    ours = {b: results[b.value]["score"] for b in Benchmark if b.value in results}
    rows = [(label, ours)] + (list(CARD_SCORES.items()) if compare_card else [])
    lines = [f"# Benchmark results: {label}", ""]
    sections = [("Vision-language benchmarks", VISION), ("Text-only benchmarks", TEXT)]
    if Benchmark.DEMO in ours:
        sections.append(("Demo (synthetic shapes, exact match)", (Benchmark.DEMO,)))
    for title, columns in sections:
        if not any(b in ours for b in columns):
            continue
        lines += [f"## {title}", "", *_table(columns, [r for r in rows if any(b in r[1] for b in columns)]), ""]
    lines += ["## Samples and categories", "", "| Benchmark | n | score | categories |", "|---|---|---|---|"]
    for b in Benchmark:
        if b.value in results:
            r = results[b.value]
            cats = ", ".join(f"{k}: {v}" for k, v in r.get("categories", {}).items()) or "-"
            extra = f"; extraction: {r['extraction']}" if "extraction" in r else ""
            lines.append(f"| {TITLES[b]} | {r['n']} | {_fmt(b, r['score'])} | {cats}{extra} |")
    if compare_card:
        lines += ["", "Card rows: the NVLM-D-72B model card's published numbers (huggingface.co/nvidia/NVLM-D-72B)."]
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, results: dict, rows: dict[Benchmark, list[dict]], compare_card: bool = False) -> None:
    """results.md, and predictions.jsonl with this run's rows replacing earlier ones of the same benchmark."""
    out = Path(out)
    (out / "results.md").write_text(render_markdown(results, compare_card))
    per = out / "predictions"
    per.mkdir(exist_ok=True)
    for bench, bench_rows in rows.items():
        (per / f"{bench.value}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bench_rows))
    with open(out / "predictions.jsonl", "w") as f:
        for b in Benchmark:
            if b.value in results and (per / f"{b.value}.jsonl").is_file():
                f.write((per / f"{b.value}.jsonl").read_text())
