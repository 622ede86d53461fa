"""``nvlm-generate``'s records: JSONL in, JSONL out, resumable.

Input records are ``{"id", "question" | "messages", "images": [paths], "system"?}``; relative image
paths are relative to the input file. The output holds one line per finished record; a rerun reads
it, drops a line cut short by a kill, and skips the ids already there, so no record is generated
twice. A record that cannot be used is skipped with a reason (``RecordError``), never a crash.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from nvlm_train.inference.engine import GenerationRequest, GenerationResult


class RecordError(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason, self.message = reason, message


@dataclass
class InputRecord:
    line: int  # 1-based line in the input file
    request: GenerationRequest | None
    error: RecordError | None = None


def _messages(rec: dict) -> tuple[list[tuple[str, str]], str | None]:
    system = rec.get("system", "preset")
    if "messages" in rec:
        msgs = []
        for m in rec["messages"]:
            role, text = (m["role"], m["content"]) if isinstance(m, dict) else m
            if role == "system":
                system = text
            else:
                msgs.append((str(role), str(text)))
        return msgs, system
    if "question" in rec:
        return [("user", str(rec["question"]))], system
    raise RecordError("bad_record", 'the record has neither "question" nor "messages"')


def parse_record(text: str, line: int, base: Path) -> InputRecord:
    try:
        rec = json.loads(text)
        if not isinstance(rec, dict):
            raise RecordError("bad_record", "a record must be a JSON object")
        if "id" not in rec:
            raise RecordError("bad_record", 'the record has no "id"')
        messages, system = _messages(rec)
        images = [p if Path(p).is_absolute() else str(base / p) for p in rec.get("images") or []]
        return InputRecord(line, GenerationRequest(str(rec["id"]), messages, images, system))
    except json.JSONDecodeError as exc:
        return InputRecord(line, None, RecordError("bad_json", str(exc)))
    except RecordError as exc:
        return InputRecord(line, None, exc)
    except (KeyError, TypeError, ValueError) as exc:
        return InputRecord(line, None, RecordError("bad_record", f"{type(exc).__name__}: {exc}"))


def read_input(path: Path) -> list[InputRecord]:
    base = path.resolve().parent
    return [parse_record(text, i, base) for i, text in enumerate(path.read_text().splitlines(), 1) if text.strip()]


def finished_ids(output: Path) -> set[str]:
    """Ids already in ``output``; a last line without its newline (a killed write) is dropped from the file."""
    if not output.is_file():
        return set()
    data = output.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with output.open("r+b") as f:
            f.truncate(cut)
        data = data[:cut]
    return {json.loads(line)["id"] for line in data.decode().splitlines() if line.strip()}


def output_line(result: GenerationResult) -> str:
    return json.dumps({"id": result.id, "response": result.text, "tokens": result.tokens,
                       "latency_s": round(result.latency_s, 6), "finish_reason": result.finish_reason}) + "\n"


def append_lines(output: Path, lines: list[str]) -> None:
    """Append and flush to disk: what a rerun finds is what was finished."""
    with output.open("a") as f:
        f.write("".join(lines))
        f.flush()
        os.fsync(f.fileno())
