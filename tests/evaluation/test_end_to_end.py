"""Every benchmark format through a tiny trained checkpoint at TP2 (the generation engine on 2
gloo ranks) and through its HF export (``model.chat``): the same replies, the same scores and the
same results table; ``--benchmark demo`` gives inference/evaluate.py's accuracy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nvlm_train.cli.eval import main as eval_main
from nvlm_train.config.parallel import ParallelConfig
from nvlm_train.evaluation.benchmark_names import Benchmark
from nvlm_train.evaluation.results import render_markdown, update_results
from nvlm_train.evaluation.runner import RunOptions, run_benchmark
from tests.evaluation.conftest import TRAINING_LIMIT
from tests.evaluation.fixtures import write_fixtures
from tests.training.conftest import REPO

LIMIT, NEW_TOKENS, DEMO_LIMIT = 2, 4, 8


def _options(bench: Benchmark, writer: bool = True) -> RunOptions:
    demo = bench is Benchmark.DEMO  # the demo's own prompt settings (6 new tokens, the trained tiles)
    return RunOptions(limit=DEMO_LIMIT if demo else LIMIT, max_new_tokens=None if demo else NEW_TOKENS,
                      progress=False, writer=writer)


def _evaluate_all(backend, data: dict, out: Path, writer: bool = True) -> dict:
    results = {}
    for bench, path in data.items():
        summary, rows = run_benchmark(bench, path, backend, out, _options(bench, writer))
        results[bench] = (summary, [r["reply"] for r in rows])
    return results


def _megatron_rank(checkpoint: Path, data: dict, out: Path) -> dict:
    import torch.distributed as dist

    from nvlm_train.evaluation.backends import EngineBackend

    backend = EngineBackend.from_checkpoint(checkpoint)
    assert backend.engine.max_tiles == 1  # the checkpoint's training setting
    return _evaluate_all(backend, data, out, writer=dist.get_rank() == 0)


@pytest.fixture(scope="module")
def both(tiny_model, tmp_path_factory):
    from nvlm_train.evaluation.backends import HFBackend
    from nvlm_train.runtime.spawn import run_on_layout

    root = tmp_path_factory.mktemp("e2e")
    data = {b: path for b, (path, _) in write_fixtures(root / "files").items()}
    data[Benchmark.DEMO] = tiny_model.data_root
    ranks = run_on_layout(_megatron_rank, ParallelConfig(tp=2), tiny_model.checkpoint, data, root / "megatron")
    backend = HFBackend.load(tiny_model.hf)
    assert backend.model.config.max_dynamic_patch == 1  # the export carries the trained tiles
    hf = _evaluate_all(backend, data, root / "hf")
    return ranks, hf, root


@pytest.mark.multirank
def test_megatron_tp2_and_hf_export_give_the_same_predictions_and_table(both):
    ranks, hf, root = both
    assert ranks[0].keys() == ranks[1].keys() == hf.keys() == set(Benchmark)
    for bench in Benchmark:
        (m_summary, m_replies), (h_summary, h_replies) = ranks[0][bench], hf[bench]
        assert m_replies == ranks[1][bench][1]  # every rank gets the results
        assert m_replies == h_replies, (bench, m_replies, h_replies)
        assert m_summary == h_summary, bench
        assert m_summary["n"] == (DEMO_LIMIT if bench is Benchmark.DEMO else len(m_replies))
        assert m_summary["errors"] == 0, bench  # every request ran (none refused by the engine)
    assert sum(bool(r.strip()) for b in Benchmark for r in hf[b][1]) >= 10  # the model does answer
    tables = []
    for name, results in (("megatron", ranks[0]), ("hf", hf)):
        merged = update_results(root / name, "tiny", {b: s for b, (s, _) in results.items()})
        tables.append(render_markdown(merged))
        cached = (root / name / "cache" / "ai2d.jsonl").read_text().splitlines()
        assert len(cached) == LIMIT  # every answered sample cached, by the writer rank only
    assert tables[0] == tables[1]
    assert "| Model | MMMU (val) | MathVista | OCRBench | AI2D | ChartQA | DocVQA | TextVQA | RealWorldQA | VQAv2 |" \
        in tables[0]


@pytest.mark.multirank
def test_demo_benchmark_gives_the_demo_accuracy(both, tiny_model, tmp_path, capsys):
    ranks, _, _ = both
    demo_score = ranks[0][Benchmark.DEMO][0]["score"]
    ref = subprocess.run([sys.executable, "-m", "nvlm_train.cli.demo_eval", "megatron", "--checkpoint",
                          str(tiny_model.checkpoint), "--data-root", str(tiny_model.data_root), "--limit",
                          str(DEMO_LIMIT)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]
    reference = json.loads(ref.stdout.strip().splitlines()[-1])
    assert demo_score == pytest.approx(100 * reference["accuracy"])
    assert ranks[0][Benchmark.DEMO][0]["categories"] == pytest.approx(
        {task: 100 * acc for task, acc in reference["per_task"].items()}, abs=0.01)
    # the command line (megatron at TP2 on 2 spawned ranks): the same number, the results files; a failure
    # exits non-zero
    cmd = [sys.executable, "-m", "nvlm_train.cli.eval", "--benchmark", "demo", "--data", str(tiny_model.data_root),
           "--checkpoint", str(tiny_model.checkpoint), "--tp", "2", "--out", str(tmp_path / "out"), "--limit",
           str(DEMO_LIMIT), "--compare-card", "--no-progress"]
    cli = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["demo"]["score"] == demo_score and results["demo"]["n"] == DEMO_LIMIT
    assert len((tmp_path / "out" / "predictions.jsonl").read_text().splitlines()) == DEMO_LIMIT
    assert "| megatron iter_0000006 |" in (tmp_path / "out" / "results.md").read_text()
    assert eval_main(cmd[3:5] + ["--data", str(tmp_path / "missing")] + cmd[7:]) == 1
    assert "nvlm-eval: --data" in capsys.readouterr().err


@pytest.mark.multirank
def test_training_scores_benchmarks_at_eval_interval(both, tiny_model):
    """train.eval_benchmarks ran at iteration 6 on the live TP2 model: its scores are in metrics.jsonl,
    its answers are the ones the saved iteration-6 checkpoint gives."""
    ranks, _, _ = both
    run = tiny_model.checkpoint.parent
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if r["iteration"] == 6][-1]
    assert "bench/demo" in last and "bench/ai2d" in last
    during = [json.loads(line) for line in (run / "benchmarks" / "iter_0000006" / "cache" / "demo.jsonl")
              .read_text().splitlines()]
    assert [r["reply"] for r in during] == ranks[0][Benchmark.DEMO][1][:TRAINING_LIMIT]
    assert last["bench/demo"] == pytest.approx(100 * sum(r["score"] for r in during) / TRAINING_LIMIT)
