"""Readers: a benchmark's local files -> ``EvalSample``s. Nothing is downloaded.

Accepted layouts (``--data`` is the file, or the folder holding it; images are looked up next to
the file, in its ``images/`` folder and in the folders named below):

* **VLMEvalKit TSVs** for every vision benchmark (``MMMU_DEV_VAL.tsv``, ``MathVista_MINI.tsv``,
  ``OCRBench.tsv``, ``AI2D_TEST.tsv``, ``ChartQA_TEST.tsv``, ``DocVQA_VAL.tsv``, ``TextVQA_VAL.tsv``,
  ``RealWorldQA.tsv``): columns ``index``, ``image`` (base64; or ``image_path``), ``question``,
  ``answer`` (a letter, a string, or a list written as ``['a', 'b']``), options in columns ``A``..``I``,
  optional ``hint``, ``category``, ``split`` (MMMU: only ``validation`` rows are kept), and for
  MathVista ``question_type``, ``answer_type``, ``precision``, ``choices``.
* **Official releases**:
  VQAv2 -- a folder with ``*questions*.json`` (``questions``: ``question_id``, ``image_id``, ``question``)
  and ``*annotations*.json`` (``annotations``: ``question_id``, ``answers[].answer``, ``answer_type``),
  images ``COCO_val2014_{image_id:012d}.jpg`` (in ``val2014/`` or next to them);
  TextVQA -- ``TextVQA_0.5.1_val.json`` (``data``: ``question_id``, ``image_id``, ``question``,
  ``answers``), images ``{image_id}.jpg`` in ``train_images/``;
  DocVQA -- ``val_v1.0.json`` (``data``: ``questionId``, ``question``, ``image``, ``answers``);
  ChartQA -- ``test_human.json``/``test_augmented.json`` (``imgname``, ``query``, ``label``), images in
  ``png/``; the file name is the category;
  OCRBench -- ``OCRBench.json`` (``id``, ``dataset_name``, ``type``, ``image_path``, ``question``,
  ``answers``), images in ``OCRBench_Images/``;
  AI2D -- JSON lines (``question_id``, ``image``, ``question``, ``options``/``choices``, ``answer`` as a
  letter or an index);
  RealWorldQA -- the HF parquet/JSON (``image``, ``question`` with its options, ``answer`` letter) or
  Megatron-LM's JSON (``choices``, ``correct_choice_index``, ``question_type``);
  MMMU -- the HF parquet files of the validation split (``id``, ``question``, ``options`` as a list
  literal, ``answer``, ``question_type``, ``image_1``..``image_7`` as ``{bytes, path}``, ``subfield``);
  the subject is the part of ``id`` between ``validation_`` and the number;
  MathVista -- the HF ``testmini`` parquet (``pid``, ``question``, ``query``, ``decoded_image`` or
  ``image``, ``choices``, ``answer``, ``question_type``, ``answer_type``, ``precision``);
  MMLU -- ``data/test/*_test.csv`` (no header: question, A, B, C, D, answer letter; the subject from the
  file name) or the HF parquet (``question``, ``subject``, ``choices``, ``answer`` index);
  GSM8K -- ``test.jsonl`` (``question``, ``answer`` ending ``#### N``);
  MATH -- ``test/<type>/<n>.json`` files or JSON lines (``problem``, ``solution`` or ``answer``,
  ``type``/``subject``, ``level``);
  HumanEval -- ``HumanEval.jsonl(.gz)`` (``task_id``, ``prompt``, ``test``, ``entry_point``).
* ``demo``: the demo's data root (its ``heldout/`` shards, via ``read_heldout``).

A record that cannot be read (missing field, undecodable image) is skipped and counted, never fatal.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nvlm_train.evaluation.benchmark_names import Benchmark
from nvlm_train.evaluation.images import ImageError, LazyImage, lazy_image
from nvlm_train.evaluation.metrics.choice import choice_letters
from nvlm_train.evaluation.records import RecordsError, files_of, read_file
from nvlm_train.evaluation.samples import EvalSample

_LETTERS = choice_letters(9)


class BadRecord(ValueError):
    """One record that is skipped (and counted)."""


@dataclass
class ReadResult:
    samples: list[EvalSample]
    skipped: Counter = field(default_factory=Counter)  # reason -> count


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str)
                                                                                and not value.strip())


def _get(row: dict, *keys: str, default: Any = None, required: bool = False) -> Any:
    for key in keys:
        if key in row and not _missing(row[key]):
            return row[key]
    if required:
        raise BadRecord(f"missing field {' / '.join(keys)}")
    return default


def _as_list(value: Any) -> list:
    """A list from a list, a JSON/Python list literal, a numpy array, or a scalar."""
    if value is None:
        return []
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str) and value.strip().startswith("["):
        for parse in (json.loads, ast.literal_eval):
            try:
                parsed = parse(value)
            except (ValueError, SyntaxError):
                continue
            if isinstance(parsed, list):
                return parsed
    return [value]


def _answers(value: Any) -> list[str]:
    out = []
    for a in _as_list(value):
        if isinstance(a, dict):
            a = a.get("answer", "")
        out.append(str(a))
    return out


def _options(row: dict) -> list[str]:
    letters = [c for c in _LETTERS if not _missing(row.get(c))]
    if letters:
        return [str(row[c]) for c in _LETTERS[:len(letters)]]
    return [str(c) for c in _as_list(_get(row, "options", "choices", default=None))]


def _letter(answer: Any, choices: list[str]) -> str:
    """A gold answer as an option letter: given as a letter, an index or an option's text."""
    text = str(answer).strip()
    if len(text) == 1 and text.upper() in _LETTERS[:max(1, len(choices))]:
        return text.upper()
    if re.fullmatch(r"\d+", text) and int(text) < len(choices):
        return _LETTERS[int(text)]
    if text in choices:
        return _LETTERS[choices.index(text)]
    raise BadRecord(f"answer {text!r} is not one of the {len(choices)} options")


class Reader:
    """Row -> sample conversion with the image search roots of one data path."""

    def __init__(self, data: Path, image_dirs: Iterable[str] = ()):
        self.data = data
        base = data if data.is_dir() else data.parent
        self.roots = [base, base / "images", *(base / d for d in image_dirs)]
        parent = base.parent
        self.roots += [parent, *(parent / d for d in image_dirs)]

    def image(self, value: Any) -> LazyImage:
        return lazy_image(value, self.roots)

    def images(self, row: dict, *keys: str) -> list:
        for key in keys:
            value = row.get(key)
            empty = not value if isinstance(value, (dict, bytes)) else _missing(value)
            if empty:
                continue
            if isinstance(value, str) and value.strip().startswith("["):  # several base64 images
                return [self.image(v) for v in _as_list(value)]
            return [self.image(value)]
        raise BadRecord(f"no image ({' / '.join(keys)})")


_IMAGE_KEYS = ("decoded_image", "image", "image_path", "img_path", "imgname")


def _vqa_like(r: Reader, row: dict, idx: int) -> EvalSample:
    sid = _get(row, "index", "question_id", "questionId", "id", default=idx)
    image_keys = _IMAGE_KEYS
    if "image" not in row and "image_id" in row:
        row = {**row, "image": f"{row['image_id']}.jpg"}
    return EvalSample(str(sid), str(_get(row, "question", "query", required=True)),
                      _answers(_get(row, "answers", "answer", "label", required=True)),
                      r.images(row, *image_keys), category=str(_get(row, "category", "answer_type", "_file",
                                                                    default="")))


def _mc(r: Reader, row: dict, idx: int) -> EvalSample:
    """AI2D / RealWorldQA: options in columns or a list; a letter (or index/text) answer."""
    choices = _options(row)
    question = str(_get(row, "question", required=True))
    if not choices and "correct_choice_index" in row:  # Megatron-LM's RealWorldQA JSON
        choices = [str(c) for c in _as_list(row.get("choices"))]
    if not choices:  # RealWorldQA's HF release: options inside the question as "A. ..." lines
        found = re.findall(r"^([A-I])[.)]\s*(.+)$", question, re.MULTILINE)
        if found:
            choices = [text.strip() for _, text in found]
            question = "\n".join(line for line in question.splitlines()
                                 if not re.match(r"^[A-I][.)]\s", line)).strip()
            question = re.sub(r"\s*Please answer directly.*$", "", question, flags=re.DOTALL | re.IGNORECASE)
    answer = _get(row, "correct_choice_index", "answer", required=True)
    if not choices:
        return EvalSample(str(_get(row, "index", "question_id", default=idx)), question, _answers(answer),
                          r.images(row, *_IMAGE_KEYS), category=str(_get(row, "category", default="open")))
    return EvalSample(str(_get(row, "index", "question_id", "id", default=idx)), question,
                      [_letter(answer, choices)], r.images(row, *_IMAGE_KEYS), choices=choices,
                      category=str(_get(row, "category", default="")), meta={"hint": _get(row, "hint", default="")})


def _mmmu(r: Reader, row: dict, idx: int) -> EvalSample:
    split = str(_get(row, "split", default="validation"))
    sid = str(_get(row, "id", "index", default=idx))
    if split not in ("validation", "val") or sid.startswith(("dev_", "test_")):
        raise BadRecord("not in the validation split")
    choices = _options(row)
    qtype = str(_get(row, "question_type", default="multiple-choice" if choices else "open"))
    if qtype == "multiple-choice" and not choices:
        raise BadRecord("multiple-choice question without options")
    keys = [f"image_{i}" for i in range(1, 8)]
    images = [r.image(row[k]) for k in keys if k in row and row[k] is not None and not _missing(row[k])
              ] if any(k in row for k in keys) else r.images(row, "image", "image_path")
    subject = re.sub(r"^(?:validation|dev|test)_(.+?)_\d+$", r"\1", sid)
    answer = _get(row, "answer", required=True)
    answers = [_letter(answer, choices)] if qtype == "multiple-choice" else _answers(answer)
    return EvalSample(sid, str(_get(row, "question", required=True)), answers, images, choices=choices,
                      category=str(_get(row, "category", "subfield", default=subject if subject != sid else "")),
                      meta={"question_type": qtype, "hint": _get(row, "hint", default="")})


def _mathvista(r: Reader, row: dict, idx: int) -> EvalSample:
    choices = [str(c) for c in _as_list(_get(row, "choices", default=None))] or _options(row)
    qtype = str(_get(row, "question_type", default="multi_choice" if choices else "free_form"))
    answer = str(_get(row, "answer", required=True))
    if qtype == "multi_choice" and len(answer) == 1 and answer in _LETTERS[:len(choices)] and answer not in choices:
        answer = choices[_LETTERS.index(answer)]  # VLMEvalKit stores the letter
    precision = _get(row, "precision", default=None)
    meta = {"question_type": qtype, "answer_type": str(_get(row, "answer_type", default="text")),
            "precision": None if precision is None else int(float(precision)),
            "query": str(_get(row, "query", default=""))}
    return EvalSample(str(_get(row, "pid", "index", default=idx)), str(_get(row, "question", required=True)),
                      [answer], r.images(row, *_IMAGE_KEYS), choices=choices if qtype == "multi_choice" else [],
                      category=str(_get(row, "category", "task", default=qtype)), meta=meta)


def _ocrbench(r: Reader, row: dict, idx: int) -> EvalSample:
    category = str(_get(row, "type", "category", required=True))
    return EvalSample(str(_get(row, "id", "index", default=idx)), str(_get(row, "question", required=True)),
                      _answers(_get(row, "answers", "answer", required=True)), r.images(row, *_IMAGE_KEYS),
                      category=category, meta={"dataset_name": str(_get(row, "dataset_name", default=""))})


def _chartqa(r: Reader, row: dict, idx: int) -> EvalSample:
    sample = _vqa_like(r, row, idx)
    if row.get("_category"):
        sample.category = row["_category"]
    return sample


def _mmlu(r: Reader, row: dict, idx: int) -> EvalSample:
    choices = _options(row)
    if len(choices) < 2:
        raise BadRecord("fewer than two options")
    subject = str(_get(row, "subject", default=re.sub(r"_(test|val|dev)$", "", str(row.get("_file", "")))))
    return EvalSample(f"{subject}/{_get(row, 'index', default=idx)}", str(_get(row, "question", required=True)),
                      [_letter(_get(row, "answer", required=True), choices)], choices=choices, category=subject)


def _gsm8k(r: Reader, row: dict, idx: int) -> EvalSample:
    from nvlm_train.evaluation.metrics.gsm8k import gold_answer

    return EvalSample(str(_get(row, "index", "id", default=idx)), str(_get(row, "question", required=True)),
                      [gold_answer(str(_get(row, "answer", required=True)))])


def _math(r: Reader, row: dict, idx: int) -> EvalSample:
    gold = _get(row, "answer", default=None) or _get(row, "solution", required=True)
    return EvalSample(str(_get(row, "unique_id", "id", "_key", default=idx)), str(_get(row, "problem",
                                                                                       required=True)),
                      [str(gold)], category=str(_get(row, "type", "subject", default="")),
                      meta={"level": str(_get(row, "level", default=""))})


def _humaneval(r: Reader, row: dict, idx: int) -> EvalSample:
    return EvalSample(str(_get(row, "task_id", required=True)), str(_get(row, "prompt", required=True)), [],
                      meta={"test": str(_get(row, "test", required=True)),
                            "entry_point": str(_get(row, "entry_point", required=True))})


_ROW_READERS: dict[Benchmark, tuple[Callable[[Reader, dict, int], EvalSample], tuple[str, ...]]] = {
    Benchmark.MMMU: (_mmmu, ()),
    Benchmark.MATHVISTA: (_mathvista, ()),
    Benchmark.OCRBENCH: (_ocrbench, ("OCRBench_Images",)),
    Benchmark.AI2D: (_mc, ("ai2d_images", "images")),
    Benchmark.CHARTQA: (_chartqa, ("png", "test/png")),
    Benchmark.DOCVQA: (_vqa_like, ("documents",)),
    Benchmark.TEXTVQA: (_vqa_like, ("train_images", "train_val_images/train_images")),
    Benchmark.REALWORLDQA: (_mc, ()),
    Benchmark.MMLU: (_mmlu, ()),
    Benchmark.GSM8K: (_gsm8k, ()),
    Benchmark.MATH: (_math, ()),
    Benchmark.HUMANEVAL: (_humaneval, ()),
}
_MMLU_FIELDS = ["question", "A", "B", "C", "D", "answer"]


def _rows(benchmark: Benchmark, data: Path) -> Iterable[dict]:
    for path in files_of(data):
        fieldnames = _MMLU_FIELDS if benchmark is Benchmark.MMLU else None
        for row in read_file(path, fieldnames):
            if not isinstance(row, dict):
                continue
            if benchmark is Benchmark.CHARTQA and path.suffix == ".json":
                row = {**row, "_category": path.stem.replace("test_", "")}
            if benchmark is Benchmark.MATH and path.suffix == ".json" and "_key" not in row:
                row = {**row, "_key": f"{path.parent.name}/{path.stem}"}
            yield row


def _read_vqav2(data: Path, reader: Reader, limit: int | None = None) -> ReadResult:
    """VQAv2's official question and annotation files, joined on ``question_id``."""
    folder = data if data.is_dir() else data.parent
    questions = sorted(folder.glob("*questions*.json"))
    annotations = sorted(folder.glob("*annotations*.json"))
    if not questions or not annotations:
        if data.is_file() or list(folder.glob("*.tsv")):
            return _read_rows(Benchmark.VQAV2, data, _vqa_like, reader, limit)
        raise RecordsError(f"{folder}: VQAv2 needs *questions*.json and *annotations*.json (or a TSV)")
    answers = {a["question_id"]: a for a in json.loads(annotations[0].read_text())["annotations"]}
    result = ReadResult([])
    reader.roots += [folder / "val2014", folder.parent / "val2014"]
    for q in json.loads(questions[0].read_text())["questions"]:
        if limit is not None and len(result.samples) >= limit:
            break
        ann = answers.get(q["question_id"])
        try:
            if ann is None:
                raise BadRecord("no annotation")
            image = reader.image(f"COCO_val2014_{int(q['image_id']):012d}.jpg")
        except (BadRecord, ImageError) as exc:
            result.skipped[str(exc).split(":")[0][:80]] += 1
            continue
        result.samples.append(EvalSample(str(q["question_id"]), q["question"], _answers(ann["answers"]),
                                         [image], category=str(ann.get("answer_type", ""))))
    return result


def _read_rows(benchmark: Benchmark, data: Path, convert, reader: Reader, limit: int | None = None) -> ReadResult:
    result = ReadResult([])
    for idx, row in enumerate(_rows(benchmark, data)):
        if limit is not None and len(result.samples) >= limit:
            break
        try:
            result.samples.append(convert(reader, row, idx))
        except (BadRecord, ImageError, KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, BadRecord) and str(exc) == "not in the validation split":
                continue
            result.skipped[type(exc).__name__ + ": " + str(exc)[:80]] += 1
    return result


def _read_demo(data: Path) -> ReadResult:
    from nvlm_train.data.synth import read_heldout

    return ReadResult([EvalSample(item.key, item.question, [item.answer], [LazyImage(item.image)], category=item.task)
                       for item in read_heldout(data)])


def read_benchmark(benchmark: Benchmark, data: str | Path, limit: int | None = None) -> ReadResult:
    """The samples of ``benchmark`` in ``data`` (the first ``limit`` readable ones)."""
    data = Path(data)
    if benchmark is Benchmark.DEMO:
        result = _read_demo(data)
    elif benchmark is Benchmark.VQAV2:
        result = _read_vqav2(data, Reader(data), limit)
    else:
        convert, image_dirs = _ROW_READERS[benchmark]
        result = _read_rows(benchmark, data, convert, Reader(data, image_dirs), limit)
    result.samples = result.samples[:limit]
    return result
