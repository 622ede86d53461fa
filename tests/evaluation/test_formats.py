"""Every benchmark's file format read, prompted and scored end to end with an oracle backend (no
model): correct replies score 100 (OCRBench 1000), results files are written, reruns resume."""

from __future__ import annotations

import json

import pytest

from nvlm_train.evaluation.benchmark_names import Benchmark
from nvlm_train.evaluation.prompts import PROMPTS, user_text
from nvlm_train.evaluation.readers import read_benchmark
from nvlm_train.evaluation.results import update_results, write_outputs
from nvlm_train.evaluation.runner import CacheMismatch, RunOptions, run_benchmark
from tests.evaluation.fixtures import OracleBackend, write_fixtures

BENCHMARKS = [b for b in Benchmark if b is not Benchmark.DEMO]


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    return write_fixtures(tmp_path_factory.mktemp("bench_files"))


@pytest.mark.parametrize("bench", BENCHMARKS, ids=[b.value for b in BENCHMARKS])
def test_each_format_reads_and_scores_correct_replies_fully(bench, fixtures, tmp_path):
    data, replies = fixtures[bench]
    backend = OracleBackend(replies)
    summary, rows = run_benchmark(bench, data, backend, tmp_path, RunOptions(progress=False))
    assert summary["n"] == len(replies) and [r["id"] for r in rows] == list(replies), rows
    expected = 1000.0 if bench is Benchmark.OCRBENCH else 100.0
    assert summary["score"] == expected, rows
    for req, tiles in backend.asked:
        assert req.system == PROMPTS[bench].system
        assert req.messages[0][1].count("<image>") == len(req.images)
        assert tiles == max(1, PROMPTS[bench].max_tiles // max(1, len(req.images)))
    wrong = OracleBackend({k: "zzz" for k in replies})
    summary, _ = run_benchmark(bench, data, wrong, tmp_path / "wrong", RunOptions(progress=False))
    assert summary["score"] == 0.0


def test_prompts_follow_nvlm_evaluation(fixtures):
    ai2d = read_benchmark(Benchmark.AI2D, fixtures[Benchmark.AI2D][0]).samples[0]
    assert user_text(Benchmark.AI2D, ai2d) == ("<image>\nWhich colour?\nA. red\nB. blue\n"
                                              "Answer with the option's letter from the given choices directly.")
    vqa = read_benchmark(Benchmark.VQAV2, fixtures[Benchmark.VQAV2][0]).samples[0]
    assert user_text(Benchmark.VQAV2, vqa) == ("<image>\nWhat colour?\n"
                                              "Answer the question using a single word or phrase.")
    assert len(vqa.answers) == 10
    mv = read_benchmark(Benchmark.MATHVISTA, fixtures[Benchmark.MATHVISTA][0]).samples
    assert user_text(Benchmark.MATHVISTA, mv[0]) == "<image>\ninteger.\nQuestion: How many?"  # query, no "Hint: "
    assert mv[1].answers == ["1.5"]  # VLMEvalKit's letter mapped to the option text
    mmmu = read_benchmark(Benchmark.MMMU, fixtures[Benchmark.MMMU][0]).samples
    assert [s.id for s in mmmu] == ["validation_Art_1", "validation_Math_2"]  # dev rows left out
    assert user_text(Benchmark.MMMU, mmmu[0]).startswith("<image 1><image>\n<image 1> Which colour?\nA. red\n")


def test_bad_records_are_skipped_and_counted(tmp_path):
    from tests.evaluation.fixtures import _tsv, b64

    data = _tsv(tmp_path / "AI2D_TEST.tsv", [
        {"index": 0, "image": b64((1, 2, 3)), "question": "q", "A": "x", "B": "y", "answer": "A"},
        {"index": 1, "image": "bm90IGFuIGltYWdl", "question": "q", "A": "x", "B": "y", "answer": "A"},
        {"index": 2, "image": b64((1, 2, 3)), "question": "q", "A": "x", "B": "y", "answer": "Q"}])
    read = read_benchmark(Benchmark.AI2D, data)
    assert [s.id for s in read.samples] == ["0"] and sum(read.skipped.values()) == 2


def test_results_files_resume_and_refuse_another_models_cache(fixtures, tmp_path):
    data, replies = fixtures[Benchmark.GSM8K]
    first = OracleBackend(replies)
    summary, rows = run_benchmark(Benchmark.GSM8K, data, first, tmp_path, RunOptions(limit=1, progress=False))
    assert summary["n"] == 1 and len(first.asked) == 1
    again = OracleBackend(replies)
    summary, rows = run_benchmark(Benchmark.GSM8K, data, again, tmp_path, RunOptions(progress=False))
    assert summary["n"] == 2 and [r.id for r, _ in again.asked] == ["1"]  # the cached sample is not asked again
    results = update_results(tmp_path, "oracle", {Benchmark.GSM8K: summary})
    write_outputs(tmp_path, results, {Benchmark.GSM8K: rows}, compare_card=True)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["gsm8k"] == {"score": 100.0, "n": 2, "categories": {}, "errors": 0}
    md = (tmp_path / "results.md").read_text()
    assert "| Model | MMLU | GSM8K | MATH | HumanEval |" in md
    assert "| oracle | - | 100.0 | - | - |" in md
    assert "| NVLM-D 1.0 72B (Huggingface), model card | 81.7 | 93.2 | 73.1 | 89.0 |" in md
    assert len((tmp_path / "predictions.jsonl").read_text().splitlines()) == 2
    other = OracleBackend(replies)
    other.fingerprint = "another model"
    with pytest.raises(CacheMismatch):
        run_benchmark(Benchmark.GSM8K, data, other, tmp_path, RunOptions(progress=False))


def test_hf_parquet_releases(tmp_path, monkeypatch):
    """MMMU's and MathVista's HF parquet rows (images as {bytes, path} structs); written as parquet when
    pyarrow is installed, else handed to the reader as pyarrow would."""
    from tests.evaluation.fixtures import png

    image = {"bytes": png((9, 9, 9)), "path": "x.png"}
    tables = {
        "mmmu.parquet": [{"id": "validation_Art_3", "question": "<image 1> Which?", "options": "['red', 'blue']",
                          "answer": "B", "question_type": "multiple-choice", "subfield": "Painting",
                          "image_1": image, "image_2": None}],
        "testmini.parquet": [{"pid": "1", "question": "How many?", "query": "Hint: x\nQuestion: How many?",
                              "decoded_image": image, "choices": None, "answer": "3", "question_type": "free_form",
                              "answer_type": "integer", "precision": None}],
    }
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        for name, rows in tables.items():
            pq.write_table(pa.Table.from_pylist(rows), tmp_path / name)
    except ImportError:
        import nvlm_train.evaluation.readers as readers

        for name in tables:
            (tmp_path / name).write_bytes(b"")
        monkeypatch.setattr(readers, "read_file", lambda path, fields=None: iter(tables[path.name]))
    mmmu = read_benchmark(Benchmark.MMMU, tmp_path / "mmmu.parquet").samples
    assert [(s.id, s.choices, s.answers, len(s.images), s.category) for s in mmmu] == [
        ("validation_Art_3", ["red", "blue"], ["B"], 1, "Painting")]
    mv = read_benchmark(Benchmark.MATHVISTA, tmp_path / "testmini.parquet").samples
    assert mv[0].answers == ["3"] and mv[0].meta["answer_type"] == "integer" and len(mv[0].images) == 1
    assert user_text(Benchmark.MATHVISTA, mv[0]) == "<image>\nx\nQuestion: How many?"
