"""Benchmarks at ``train.eval_interval``: ``train.eval_benchmarks=[demo,ai2d]``, their files in
``train.eval_benchmark_data=['ai2d=/data/AI2D_TEST.tsv']`` (``demo`` defaults to the run's demo data),
``train.eval_benchmark_limit`` samples each.

The live model answers (the generation engine over the training ranks' own model chunks, at the
training layout; no checkpoint round trip); every rank takes part, rank 0 writes the per-sample
files to ``<run.dir>/benchmarks/iter_NNNNNNN/`` and the scores go into that step's metrics.jsonl
record (and wandb) as ``bench/<name>``. Layers other than ``torch`` run with batch size 1 (no
padding mask is needed then).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch.distributed as dist

from nvlm_train.config.errors import ConfigError
from nvlm_train.evaluation.benchmark_names import Benchmark

METRIC_PREFIX = "bench/"


def data_paths(entries) -> dict[str, str]:
    """``["name=path", ...]`` -> ``{name: path}``."""
    out = {}
    for entry in entries or ():
        name, sep, path = str(entry).partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ConfigError(f"train.eval_benchmark_data entry {entry!r}: write it as 'name=/path/to/file'")
        out[name.strip()] = path.strip()
    return out


def check_eval_benchmarks(names, entries, limit: int, build_demo: bool = False) -> None:
    """Config validation: known names, an existing data path for each (demo: or the run's demo data),
    a positive limit."""
    known = {b.value for b in Benchmark}
    data = data_paths(entries)
    for name in names or ():
        if name == Benchmark.DEMO and not build_demo and not (data or {}).get(name):
            raise ConfigError("train.eval_benchmarks has demo but this run builds no demo data: add "
                              "train.eval_benchmark_data=['demo=/path/to/demo/data_root']")
        if name not in known:
            raise ConfigError(f"train.eval_benchmarks: unknown benchmark {name!r}; use some of "
                              f"{', '.join(sorted(known))}")
        if name != Benchmark.DEMO and not (data or {}).get(name):
            raise ConfigError(f"train.eval_benchmarks has {name} but train.eval_benchmark_data has no path for it: "
                              f"add train.eval_benchmark_data=['{name}=/path/to/its/file']")
        if name != Benchmark.DEMO and not Path(data[name]).exists():
            raise ConfigError(f"train.eval_benchmark_data: {data[name]} ({name}) does not exist")
    if names and limit < 1:
        raise ConfigError(f"train.eval_benchmark_limit={limit} must be >= 1")


def _unwrap(chunk):
    while hasattr(chunk, "module"):
        chunk = chunk.module
    return chunk


class TrainingBenchmarks:
    """What the trainer calls: built (and the config checked) when the trainer starts, run at each
    ``eval_interval``."""

    def __init__(self, cfg):
        t = cfg.train
        check_eval_benchmarks(t.eval_benchmarks, t.eval_benchmark_data, t.eval_benchmark_limit, cfg.data.build_demo)
        self.names = [Benchmark(n) for n in t.eval_benchmarks or []]
        self.data = data_paths(t.eval_benchmark_data)

    def scores(self, trainer) -> dict[str, float]:
        """``{"bench/<name>": score}`` of the live model now (collective; {} when none are set)."""
        if not self.names:
            return {}
        from nvlm_train.data.prompt import saved_prompt
        from nvlm_train.data.tokenizer import TextTokenizer, build_demo_tokenizer
        from nvlm_train.evaluation.backends import EngineBackend
        from nvlm_train.evaluation.runner import RunOptions, run_benchmark
        from nvlm_train.inference.engine import GenerationEngine

        cfg = trainer.cfg
        iteration = trainer.state.iteration
        batch = 8 if str(cfg.model.impl) == "torch" else 1
        tokenizer = TextTokenizer(cfg.data.tokenizer_dir or build_demo_tokenizer())
        engine = GenerationEngine(_unwrap(trainer.chunks[0]), cfg.model, tokenizer, saved_prompt(asdict(cfg.data)),
                                  cfg.data.max_tiles, batch_size=batch)
        run_dir = Path(cfg.run.dir)
        backend = EngineBackend(engine, f"iteration {iteration}", f"training:{run_dir.resolve()}:{iteration}")
        opts = RunOptions(limit=cfg.train.eval_benchmark_limit, progress=False, writer=dist.get_rank() == 0)
        out = run_dir / "benchmarks" / f"iter_{iteration:07d}"
        scores = {}
        try:
            for bench in self.names:
                data = self.data.get(bench.value) or trainer.data_root
                summary, _ = run_benchmark(bench, data, backend, out, opts)
                scores[METRIC_PREFIX + bench.value] = summary["score"]
        finally:
            for chunk in trainer.chunks:  # the engine put the model in eval mode
                chunk.train()
        return scores
