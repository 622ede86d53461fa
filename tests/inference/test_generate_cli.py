"""``nvlm-generate``: good records answered, bad ones skipped with a counted reason (exit 0), a stopped run
resumed without regenerating what it finished (a write cut short is dropped), a real failure exits 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.inference.workers import make_image

BIN = Path(sys.executable).parent


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run([str(BIN / "nvlm-generate"), *args], capture_output=True, text=True, timeout=300, env=env)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_jsonl_in_out_bad_records_and_resume(tiny_ckpt, tmp_path):
    make_image(112, 112, 0).save(tmp_path / "one.png")
    make_image(336, 112, 1).save(tmp_path / "wide.png")
    records = [
        {"id": "a", "question": "What is in this picture?", "images": ["one.png"]},
        {"id": "b", "messages": [{"role": "user", "content": "Hello, who are you?"}]},
        {"id": "gone", "question": "Where?", "images": ["missing.png"]},
        {"id": "c", "messages": [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "<image>\n<image>\nCompare."}],
         "images": ["one.png", str(tmp_path / "wide.png")]},
        {"id": "huge", "question": "word " * 5000},
        {"question": "no id"},
        {"id": "d", "question": "Describe the scene in detail.", "images": ["wide.png"]},
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in records[:5]) + "\n{not json\n"
                   + "\n".join(json.dumps(r) for r in records[5:]) + "\n")
    out = tmp_path / "out.jsonl"
    common = ["--checkpoint", str(tiny_ckpt), "--input", str(src), "--output", str(out), "--max-new-tokens", "4",
              "--batch-size", "2", "--no-progress"]

    first = _run(*common, "--max-records", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    done = _lines(out)
    assert [json.loads(line)["id"] for line in done] == ["a", "b"]
    with out.open("a") as f:
        f.write('{"id": "c", "respo')  # a write the kill cut short

    second = _run(*common)
    assert second.returncode == 0, second.stderr[-3000:]
    lines = _lines(out)
    assert lines[:2] == done  # the finished records were not regenerated (same latency, same order)
    results = {json.loads(line)["id"]: json.loads(line) for line in lines}
    assert sorted(results) == ["a", "b", "c", "d"] and len(lines) == 4
    for r in results.values():
        assert set(r) == {"id", "response", "tokens", "latency_s", "finish_reason"} and len(r["tokens"]) <= 4
        assert r["latency_s"] > 0 and isinstance(r["response"], str)
    summary = json.loads(second.stdout.strip().splitlines()[-1])
    assert (summary["generated"], summary["already_done"], summary["skipped"]) == (2, 2, 4)
    assert summary["skipped_by_reason"] == {"missing_image": 1, "too_long": 1, "bad_json": 1, "bad_record": 1}
    assert "skipped (missing_image) id 'gone'" in second.stderr and "missing.png" in second.stderr
    assert "skipped (too_long) id 'huge'" in second.stderr and "skipped (bad_json) line 6" in second.stderr


def test_a_real_failure_exits_non_zero(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "a", "question": "Hi"}) + "\n")
    proc = _run("--checkpoint", str(tmp_path / "nowhere"), "--input", str(src), "--output", str(tmp_path / "o"))
    assert proc.returncode == 1 and "is not a checkpoint" in proc.stderr, proc.stderr[-2000:]
