"""Run one benchmark through a backend: read, ask in batches, score, cache every answered sample.

Resumable: each answered sample is appended (already scored) to ``<out>/cache/<benchmark>.jsonl``
as soon as its batch finishes, so a rerun with the same model and settings asks only the rest. The
cache remembers what it is valid for (model, prompt settings); a different model in the same
``--out`` is refused rather than mixed in. Collective with the megatron backend: every rank runs
this; only the writer rank (rank 0) writes files and shows progress.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from nvlm_train.evaluation.backends import Backend
from nvlm_train.evaluation.benchmark_names import Benchmark
from nvlm_train.evaluation.images import LazyImage
from nvlm_train.evaluation.prompts import PROMPTS, tiles_per_image, user_text
from nvlm_train.evaluation.readers import read_benchmark
from nvlm_train.evaluation.samples import EvalSample
from nvlm_train.evaluation.scoring import aggregate, prepare, score_sample
from nvlm_train.inference.engine import GenerationRequest, SamplingConfig


class CacheMismatch(RuntimeError):
    """The cache in --out was written for another model or other settings."""


@dataclass
class RunOptions:
    limit: int | None = None
    batch_size: int = 8
    max_new_tokens: int | None = None  # None: the benchmark's own (prompts.PROMPTS)
    max_tiles: int | None = None  # None: the benchmark's own
    progress: bool = True
    writer: bool = True  # this rank writes the cache (rank 0)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cache_path(out: Path, benchmark: Benchmark) -> Path:
    return Path(out) / "cache" / f"{benchmark.value}.jsonl"


def _fingerprint(benchmark: Benchmark, backend: Backend, opts: RunOptions) -> dict:
    spec = dataclasses.asdict(PROMPTS[benchmark])
    if opts.max_new_tokens is not None:
        spec["max_new_tokens"] = opts.max_new_tokens
    if opts.max_tiles is not None:
        spec["max_tiles"] = opts.max_tiles
    return {"model": backend.fingerprint, "benchmark": benchmark.value, "prompt": spec}


def _load_cache(path: Path, fingerprint: dict) -> dict[str, dict]:
    meta = path.with_suffix(".meta.json")
    if not path.is_file():
        return {}
    if meta.is_file() and json.loads(meta.read_text()) != fingerprint:
        raise CacheMismatch(f"{path} holds answers of another model or other settings "
                            f"({meta.read_text().strip()}); use another --out, or delete {path.parent}")
    done = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a crash: asked again
            continue
        done[row["id"]] = row
    return done


def request_for(benchmark: Benchmark, sample: EvalSample) -> GenerationRequest:
    system = PROMPTS[benchmark].system
    images = [im.load() if isinstance(im, LazyImage) else im for im in sample.images]  # decoded only now
    return GenerationRequest(sample.id, [("user", user_text(benchmark, sample))], images, system)


def run_benchmark(benchmark: Benchmark, data: str | Path, backend: Backend, out: str | Path,
                  opts: RunOptions | None = None) -> tuple[dict, list[dict]]:
    """(summary ``{"score", "n", "categories", "skipped", ...}``, prediction rows in sample order)."""
    opts = opts or RunOptions()
    out = Path(out)
    prepare(benchmark)
    read = read_benchmark(benchmark, data, opts.limit)
    if not read.samples:
        raise ValueError(f"no readable {benchmark.value} samples in {data} (skipped: {dict(read.skipped)}); "
                         f"see `nvlm-eval --help` for the accepted files")
    fingerprint = _fingerprint(benchmark, backend, opts)
    path = cache_path(out, benchmark)
    done = _load_cache(path, fingerprint)
    _barrier()  # every rank has read the cache before the writer appends to it
    if opts.writer:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".meta.json").write_text(json.dumps(fingerprint, sort_keys=True))
    spec = PROMPTS[benchmark]
    sampling = SamplingConfig(max_new_tokens=opts.max_new_tokens or spec.max_new_tokens)
    todo = [s for s in read.samples if s.id not in done]
    bar = tqdm(total=len(read.samples), initial=len(read.samples) - len(todo), desc=benchmark.value,
               file=sys.stderr, disable=not (opts.progress and opts.writer), mininterval=1)
    groups: dict[int | None, list[EvalSample]] = {}
    for s in todo:  # the tile budget is per request; requests of one batch share it
        groups.setdefault(tiles_per_image(benchmark, s, opts.max_tiles), []).append(s)
    with bar:
        for tiles, samples in groups.items():
            for start in range(0, len(samples), opts.batch_size):
                batch = samples[start:start + opts.batch_size]
                results = backend.generate([request_for(benchmark, s) for s in batch], sampling, tiles)
                rows = [_row(benchmark, s, r) for s, r in zip(batch, results)]
                if opts.writer:
                    with open(path, "a") as f:
                        f.writelines(json.dumps(row) + "\n" for row in rows)
                done.update((row["id"], row) for row in rows)
                bar.update(len(batch))
    ordered = [done[s.id] for s in read.samples]
    summary = aggregate(benchmark, ordered)
    if read.skipped:
        summary["skipped"] = dict(read.skipped)
    summary["errors"] = sum(1 for r in ordered if r["finish_reason"].startswith("error"))
    return summary, ordered


def _row(benchmark: Benchmark, sample: EvalSample, result) -> dict:
    failed = result.finish_reason.startswith("error")
    scored = score_sample(benchmark, sample, "" if failed else result.text)
    return {"benchmark": benchmark.value, "id": sample.id, "category": sample.category,
            "prompt": user_text(benchmark, sample), "reply": result.text, "answers": sample.answers,
            "score": scored.score, "extra": scored.extra, "finish_reason": result.finish_reason,
            **({"error": getattr(result, "error", "")} if failed else {})}
