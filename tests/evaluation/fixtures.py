"""Tiny benchmark files in each distribution format (a few samples, 24x24 images), and the replies
that answer them correctly."""

from __future__ import annotations

import base64
import csv
import gzip
import io
import json
from pathlib import Path

from PIL import Image

from nvlm_train.evaluation.benchmark_names import Benchmark


def png(color: tuple[int, int, int], size: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def b64(color) -> str:
    return base64.b64encode(png(color)).decode()


def _tsv(path: Path, rows: list[dict]) -> Path:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, delimiter="\t")
        w.writeheader()
        w.writerows(rows)
    return path


def write_fixtures(root: Path) -> dict[Benchmark, tuple[Path, dict[str, str]]]:
    """benchmark -> (data path, {sample id: a correct reply})."""
    root.mkdir(parents=True, exist_ok=True)
    out: dict[Benchmark, tuple[Path, dict[str, str]]] = {}
    red, blue = (220, 20, 20), (20, 20, 220)

    # VLMEvalKit TSVs (base64 images)
    out[Benchmark.AI2D] = (_tsv(root / "AI2D_TEST.tsv", [
        {"index": 0, "image": b64(red), "question": "Which colour?", "A": "red", "B": "blue", "answer": "A",
         "category": "colour"},
        {"index": 1, "image": b64(blue), "question": "Which colour?", "A": "red", "B": "blue", "answer": "B",
         "category": "colour"}]), {"0": "A", "1": "(B)"})
    out[Benchmark.TEXTVQA] = (_tsv(root / "TextVQA_VAL.tsv", [
        {"index": 7, "image": b64(red), "question": "What word?", "answer": str(["stop"] * 9 + ["halt"])},
        {"index": 8, "image": b64(blue), "question": "What number?", "answer": str(["two"] * 10)}]),
        {"7": "Stop", "8": "2"})
    out[Benchmark.MMMU] = (_tsv(root / "MMMU_DEV_VAL.tsv", [
        {"index": 1, "id": "validation_Art_1", "image": b64(red), "question": "<image 1> Which colour?",
         "A": "red", "B": "blue", "answer": "A", "split": "validation", "category": "Art"},
        {"index": 2, "id": "dev_Art_1", "image": b64(red), "question": "dev row", "A": "x", "B": "y",
         "answer": "A", "split": "dev"},
        {"index": 3, "id": "validation_Math_2", "image": b64(blue), "question": "How many sides?",
         "answer": "4", "split": "validation", "category": "Math"}]),
        {"validation_Art_1": "the answer is A", "validation_Math_2": "So the answer is 4."})
    out[Benchmark.MATHVISTA] = (_tsv(root / "MathVista_MINI.tsv", [
        {"index": "1", "image": b64(red), "question": "How many?", "answer": "3", "question_type": "free_form",
         "answer_type": "integer", "precision": "", "query": "Hint: integer.\nQuestion: How many?"},
        {"index": "2", "image": b64(blue), "question": "Pick", "answer": "B", "question_type": "multi_choice",
         "answer_type": "text", "choices": json.dumps(["0.5", "1.5"])}]), {"1": "3", "2": "B"})
    out[Benchmark.REALWORLDQA] = (_tsv(root / "RealWorldQA.tsv", [
        {"index": 0, "image": b64(red), "question": "Is it red?", "A": "yes", "B": "no", "answer": "A"}]),
        {"0": "A."})
    out[Benchmark.DOCVQA] = (_tsv(root / "DocVQA_VAL.tsv", [
        {"index": 0, "image": b64(red), "question": "Title?", "answer": str(["Annual Report", "report"])}]),
        {"0": "annual report"})

    # official JSON releases (images as files)
    ocr = root / "ocrbench"
    (ocr / "OCRBench_Images" / "IIIT5K").mkdir(parents=True, exist_ok=True)
    (ocr / "OCRBench_Images" / "IIIT5K" / "a.png").write_bytes(png(red))
    (ocr / "OCRBench.json").write_text(json.dumps([
        {"dataset_name": "IIIT5K", "id": 0, "image_path": "IIIT5K/a.png", "question": "Read the text.",
         "answers": ["HELLO"], "type": "Regular Text Recognition"},
        {"dataset_name": "HME100k", "id": 1, "image_path": "IIIT5K/a.png", "question": "Formula?",
         "answers": "x^{2}", "type": "Handwritten Mathematical Expression Recognition"}]))
    out[Benchmark.OCRBENCH] = (ocr / "OCRBench.json", {"0": "hello", "1": "x ^ {2}"})
    chart = root / "chartqa"
    (chart / "png").mkdir(parents=True, exist_ok=True)
    (chart / "png" / "c1.png").write_bytes(png(blue))
    (chart / "test_human.json").write_text(json.dumps([{"imgname": "c1.png", "query": "Max?", "label": "40"}]))
    out[Benchmark.CHARTQA] = (chart, {"0": "41"})
    vqa = root / "vqav2"
    (vqa / "val2014").mkdir(parents=True, exist_ok=True)
    (vqa / "val2014" / "COCO_val2014_000000000042.jpg").write_bytes(png(red))
    (vqa / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps(
        {"questions": [{"image_id": 42, "question": "What colour?", "question_id": 4200}]}))
    (vqa / "v2_mscoco_val2014_annotations.json").write_text(json.dumps(
        {"annotations": [{"question_id": 4200, "image_id": 42, "answer_type": "other",
                          "answers": [{"answer": "red"}] * 10}]}))
    out[Benchmark.VQAV2] = (vqa, {"4200": "Red."})

    # text-only: CSV, JSON lines, MATH's per-problem JSON files, HumanEval's jsonl.gz
    mmlu = root / "mmlu" / "test"
    mmlu.mkdir(parents=True, exist_ok=True)
    with open(mmlu / "astronomy_test.csv", "w", newline="") as f:
        csv.writer(f).writerows([["Which is a planet?", "Mars", "Sun", "Moon", "Vega", "A"],
                                 ["Closest star?", "Vega", "Sun", "Sirius", "Rigel", "B"]])
    out[Benchmark.MMLU] = (root / "mmlu", {"astronomy/0": "A", "astronomy/1": "B"})
    (root / "gsm8k.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"question": "2 + 3 apples?", "answer": "2 + 3 = 5\n#### 5"},
        {"question": "1,000 + 250?", "answer": "#### 1,250"}]))
    out[Benchmark.GSM8K] = (root / "gsm8k.jsonl", {"0": "2 + 3 = 5. The answer is 5.", "1": "The answer is 1250."})
    math_dir = root / "MATH" / "test" / "algebra"
    math_dir.mkdir(parents=True, exist_ok=True)
    (math_dir / "1.json").write_text(json.dumps({"problem": "Half of 1?", "level": "Level 1", "type": "Algebra",
                                                 "solution": "It is $\\boxed{\\frac{1}{2}}$."}))
    out[Benchmark.MATH] = (root / "MATH", {"algebra/1": "So \\boxed{0.5}"})
    with gzip.open(root / "HumanEval.jsonl.gz", "wt") as f:
        f.write(json.dumps({"task_id": "HumanEval/0", "prompt": "def add(a, b):\n    \"\"\"Sum.\"\"\"\n",
                            "entry_point": "add", "canonical_solution": "    return a + b\n",
                            "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n"}) + "\n")
    out[Benchmark.HUMANEVAL] = (root / "HumanEval.jsonl.gz",
                                {"HumanEval/0": "```python\ndef add(a, b):\n    return a + b\n```"})
    return out


class OracleBackend:
    """A backend that replies from a table (and records what it was asked)."""

    label = "oracle"
    fingerprint = "oracle"

    def __init__(self, replies: dict[str, str]):
        self.replies, self.asked = replies, []

    def generate(self, requests, sampling, max_tiles):
        from nvlm_train.inference.engine import GenerationResult

        self.asked += [(r, max_tiles) for r in requests]
        return [GenerationResult(r.id, self.replies.get(r.id, "?"), [], 0.0, "stop") for r in requests]
