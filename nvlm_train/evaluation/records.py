"""Rows of a benchmark file, whatever container it comes in: TSV (VLMEvalKit), JSON (a list, or
``{"data": [...]}``/``{"questions": [...]}``), JSON lines, CSV (with or without a header) or parquet
(needs ``pyarrow``). A folder is read as all such files in it, sorted by name."""

from __future__ import annotations

import csv
import gzip
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SUFFIXES = (".tsv", ".json", ".jsonl", ".jsonl.gz", ".csv", ".parquet")


class RecordsError(ValueError):
    """A benchmark file that cannot be read at all."""


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def files_of(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and _suffix(p) in SUFFIXES)
        if found:
            return found
        raise RecordsError(f"{path} holds no benchmark file ({', '.join(SUFFIXES)})")
    raise RecordsError(f"{path} does not exist")


def _json_rows(data: Any) -> list[dict]:
    if isinstance(data, dict):
        for key in ("data", "questions", "annotations"):
            if isinstance(data.get(key), list):
                return data[key]
        if all(isinstance(v, dict) for v in data.values()):  # {id: record}
            return [{"_key": k, **v} for k, v in data.items()]
        return [data]
    if isinstance(data, list):
        return data
    raise RecordsError("a JSON benchmark file must hold a list or an object with a 'data' list")


def read_file(path: Path, csv_fieldnames: list[str] | None = None) -> Iterator[dict]:
    """Rows of one file as dicts (CSV files without a header get ``csv_fieldnames``)."""
    suffix = _suffix(path)
    if suffix == ".tsv":
        csv.field_size_limit(sys.maxsize)  # base64 images are long
        with open(path, newline="", encoding="utf-8") as f:
            yield from csv.DictReader(f, delimiter="\t")
    elif suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            first = f.readline()
            f.seek(0)
            has_header = csv_fieldnames is None or first.strip().split(",")[0].lower() in csv_fieldnames
            reader = csv.DictReader(f) if has_header else csv.DictReader(f, fieldnames=csv_fieldnames)
            for row in reader:
                yield {**row, "_file": path.stem}
    elif suffix in (".jsonl", ".jsonl.gz"):
        opener = gzip.open if suffix.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)
    elif suffix == ".json":
        yield from _json_rows(json.loads(path.read_text(encoding="utf-8")))
    elif suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise RecordsError(f"{path} is parquet: `pip install pyarrow` to read it, or convert it to JSON "
                               f"lines") from exc
        yield from pq.read_table(path).to_pylist()
    else:
        raise RecordsError(f"{path}: unknown benchmark file type (use one of {', '.join(SUFFIXES)})")
