"""Shared pieces of ``bench/gpu_perf.sh``: benchmark shards, profiler time shares, the proxy's layer count.

* ``write_bench_shards``: webdataset shards (through ``nvlm_train.data.build_shards.write_shards``)
  whose every sample is one image that tiles to the full grid (``data.max_tiles`` + thumbnail, a
  3:2 image of 3 x 2 tiles) plus text, sized with the run's own tokenizer, prompt format and
  encoder so that the sample fills ``train.seq_length`` (one sample per packed row, almost no
  padding). The demo data's images are too small for 7 tiles and its text too short to fill 3200
  tokens, so it cannot stand in for NVLM-D SFT rows.
* ``time_shares``: one profiled call split into attention / GEMM / elementwise / idle (shares sum to 1).
* ``estimate_proxy_layers``: how many language layers of a config fit one device next to the rest
  of the model, from parameter counts (``nvlm_train.model.summary.model_summary``, meta device).

Run as a script it prints the proxy layer estimate (``python bench/_perf_tools.py --help``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BENCH_DATA_VERSION = 1


# ------------------------------------------------------------------------------------------------
# benchmark shards
# ------------------------------------------------------------------------------------------------

def _words() -> list[str]:
    """Plain words of the demo corpus (they tokenize compactly with the demo tokenizer; no specials)."""
    from nvlm_train.data.synth import corpus_lines

    return sorted({w for line in corpus_lines() for w in line.split() if "<" not in w and ">" not in w})


def bench_data_dir(root: str | Path, cfg, rows: int, seed: int) -> Path:
    """Where the shards for this run's sizes live under ``root`` (one folder per shape, reused)."""
    d, m = cfg.data, cfg.model
    tok = "demo" if d.tokenizer_dir is None else re.sub(r"[^A-Za-z0-9]+", "_", str(d.tokenizer_dir)).strip("_")
    return Path(root) / (f"bench-v{BENCH_DATA_VERSION}-s{cfg.train.seq_length}-px{m.vision.image_size}"
                         f"-t{m.tokens_per_tile}-m{d.max_tiles}-{d.prompt_format}-{tok}-{rows}-seed{seed}")


def write_bench_shards(root: str | Path, cfg, rows: int = 64, seed: int = 0,
                       log: Callable[[str], None] = lambda s: None) -> Path:
    """Write (once) ``rows`` full-row samples for the run config ``cfg`` (a ``TrainConfig``); returns the
    folder holding ``recipe.yaml`` (use it as ``data.recipe``, the folder as ``data.data_root``).

    Each sample: a 3:2 image (3 x 2 tiles at the model's tile size, + thumbnail = ``max_tiles`` + 1 for
    ``data.max_tiles=6``) and a user/assistant turn whose answer is as long as fits ``seq_length``
    *with every tile* (the encoder would otherwise drop to fewer tiles). The length is found with the
    project's prompt builder and tokenizer, then checked once with ``encode_conversation`` itself.
    """
    from nvlm_train.data.build_shards import write_shards
    from nvlm_train.data.encode import EncodeOptions, encode_conversation, tokenize_segments
    from nvlm_train.data.prompt import build_segments, get_prompt_format, resolve_system
    from nvlm_train.data.samples import parse_sample
    from nvlm_train.data.synth import COLOURS, SHAPES, ShapeSpec, draw, encode_image
    from nvlm_train.data.tokenizer import TextTokenizer, build_demo_tokenizer
    from nvlm_train.vision.tiling import num_tiles

    final = bench_data_dir(root, cfg, rows, seed)
    if (final / ".complete").is_file():
        return final
    # Written aside and renamed: concurrent runs (gpu_perf.sh --smoke runs cases in parallel) never
    # read a half-written folder; the loser of the rename drops its copy.
    out = final.with_name(f"{final.name}.tmp{os.getpid()}")
    shutil.rmtree(out, ignore_errors=True)
    seq, size = cfg.train.seq_length, cfg.model.vision.image_size
    tok = TextTokenizer(cfg.data.tokenizer_dir or build_demo_tokenizer())
    fmt = cfg.data.prompt_format
    system = resolve_system(get_prompt_format(fmt), cfg.data.system_prompt)
    opts = EncodeOptions(seq_length=seq, tokens_per_tile=cfg.model.tokens_per_tile, image_size=size,
                         max_tiles=cfg.data.max_tiles, prompt_format=fmt, system=system)
    width, height = 3 * size, 2 * size
    tiles = num_tiles(width, height, max_num=cfg.data.max_tiles, image_size=size)
    words = _words()
    rng = random.Random(f"gpu-perf-{seed}")
    log(f"writing {rows} benchmark samples ({width}x{height} images, {tiles} tiles, {seq} tokens) to {final}")

    def length(question: str, answer: str) -> int:
        segments = build_segments([("user", question), ("assistant", answer)], (tiles,), opts.tokens_per_tile,
                                  system=system, fmt=fmt)
        return len(tokenize_segments(segments, tok)[0])

    def members(png: bytes, question: str, answer: str) -> dict[str, bytes]:
        conv = [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        return {"png": png, "json": json.dumps({"conversations": conv}).encode()}

    def samples():
        for i in range(rows):
            spec = ShapeSpec(rng.choice(list(COLOURS)), rng.choice(SHAPES), width, height)
            png = encode_image(draw(spec, rng), "png")
            question = "<image>\n" + " ".join(rng.choices(words, k=rng.randint(8, 40)))
            pool = rng.choices(words, k=seq)
            lo, hi = 1, seq  # the longest answer (in words) that fits: lengths grow with words
            if length(question, pool[0]) > seq:
                raise SystemExit(f"train.seq_length={seq} cannot hold {tiles} tiles x {opts.tokens_per_tile} "
                                 f"tokens and a short turn; raise it or lower data.max_tiles")
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if length(question, " ".join(pool[:mid])) <= seq else (lo, mid - 1)
            answer = " ".join(pool[:lo])
            m = members(png, question, answer)
            enc = encode_conversation(parse_sample(m), tok, opts)  # the loader's own encoder agrees
            if sum(enc.tiles_per_image) != tiles or len(enc) != length(question, answer):
                raise RuntimeError(f"sample {i}: encoder gave {len(enc)} tokens / {enc.tiles_per_image} tiles, "
                                   f"expected {length(question, answer)} / {tiles}")
            yield f"bench_{i:06d}", m

    write_shards(samples(), out / "train", prefix="bench", max_count=max(1, rows))
    (out / "recipe.yaml").write_text(
        "# Written by bench/_perf_tools.py: full-row, full-tile samples for bench/gpu_perf.sh.\n"
        "name: gpu_perf\n"
        "datasets:\n"
        "  - name: gpu-perf-rows\n"
        '    paths: ["${DATA_ROOT}/train/bench-*.tar"]\n'
        "    weight: 1.0\n"
        "    kind: auto\n")  # ${DATA_ROOT} = data.data_root: the folder may be renamed
    (out / ".complete").write_text(json.dumps({"rows": rows, "tiles": tiles, "seq_length": seq}) + "\n")
    try:
        out.rename(final)
    except OSError:  # another run finished first
        shutil.rmtree(out, ignore_errors=True)
        if not (final / ".complete").is_file():
            raise
    return final


# ------------------------------------------------------------------------------------------------
# profiler time shares
# ------------------------------------------------------------------------------------------------

SHARE_KEYS = ("attention", "gemm", "elementwise", "idle")
_ATTENTION = re.compile(r"flash|fmha|sdpa|scaled_dot_product|varlen|attention|softmax_lse", re.I)
_GEMM_KERNEL = re.compile(r"gemm|cutlass|xmma|nvjet|wgmma|cublas|s16816|hmma", re.I)
_GEMM_OP = re.compile(r"^aten::(mm|addmm|bmm|baddbmm|addbmm|linear|matmul|_addmm_activation|mv|addmv|dot)$")
_NOT_COMPUTE = re.compile(r"^ProfilerStep|^\[memory\]|^cudaDeviceSynchronize|^cudaStreamSynchronize")


def classify(name: str, kernel: bool) -> str:
    """attention / gemm / elementwise for a CUDA kernel name (``kernel``) or a CPU op name."""
    if _ATTENTION.search(name):
        return "attention"
    if (_GEMM_KERNEL if kernel else _GEMM_OP).search(name):
        return "gemm"
    return "elementwise"


def _union_us(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def time_shares(fn: Callable[[], object], on_gpu: bool) -> dict:
    """Run ``fn`` once under ``torch.profiler`` and split its wall time into attention / gemm /
    elementwise / idle. GPU: CUDA kernels by name, busy = the union of kernel intervals (overlapping
    kernels share it pro rata). CPU: each op's self time (no double counting of nested ops), busy =
    their sum, capped at the wall time. idle = 1 - busy / wall. Returns the shares and the wall time."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities) as prof:
        if on_gpu:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if on_gpu:
            torch.cuda.synchronize()
        wall_us = (time.perf_counter() - t0) * 1e6
    by_class = dict.fromkeys(SHARE_KEYS[:3], 0.0)
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA] if on_gpu else []
    if on_gpu and not kernels:  # a profiler build without CUDA activity: say so, classify the host ops
        print("time_shares: no CUDA kernels in the trace; classifying CPU ops instead", file=sys.stderr)
    if kernels:
        spans = [(e.time_range.start, e.time_range.end) for e in kernels]
        for e in kernels:
            by_class[classify(e.name, kernel=True)] += e.time_range.end - e.time_range.start
        busy = _union_us(spans)
    else:
        for e in prof.events():
            if e.device_type == DeviceType.CPU and not _NOT_COMPUTE.search(e.name):
                by_class[classify(e.name, kernel=False)] += e.self_cpu_time_total
        busy = sum(by_class.values())
    wall_us = max(wall_us, busy, 1e-9)
    summed = sum(by_class.values())
    scale = busy / summed if summed > 0 else 0.0  # overlapping work shares the busy time pro rata
    shares = {k: v * scale / wall_us for k, v in by_class.items()}
    shares["idle"] = max(0.0, 1.0 - sum(shares.values()))
    return {"time_shares": shares, "profiled_step_ms": wall_us / 1e3,
            "time_shares_basis": "CUDA kernels (union of intervals)" if kernels else "CPU op self time"}


# ------------------------------------------------------------------------------------------------
# proxy layer count
# ------------------------------------------------------------------------------------------------

def estimate_proxy_layers(model, seq_length: int, micro_batch_size: int, tiles: int, memory_gb: float,
                          bf16: bool = True, reserve_gb: float = 6.0, max_layers: int | None = None) -> dict:
    """Language layers of ``model`` (a ``ModelConfig``) that fit ``memory_gb`` at TP1/PP1, no recompute.

    Parameters from ``model_summary`` (meta device) at 1 and 2 layers: the difference is one layer,
    the rest is fixed (ViT, projector, embeddings, output layer). Bytes per trainable parameter:
    bf16 weight 2 + fp32 main grad 4 + fp32 master 4 + Adam 8 = 18 (fp32 training 16); frozen 2 (4).
    Activations per layer (bf16, kept for backward, flash attention so no s^2 term):
    b*s*(10h + 4*kv + 6f) * 2 bytes, x1.25 for what this leaves out; logits b*s*V*10 bytes (bf16 out,
    fp32 loss, fp32 grad); ``reserve_gb`` + 5% for the CUDA context, workspaces and fragmentation.
    Needs an initialised (single-process) parallel state.
    """
    from nvlm_train.model.summary import model_summary

    def counts(n: int) -> dict[str, int]:
        lm = dataclasses.replace(model.language, num_layers=n)
        return model_summary(dataclasses.replace(model, language=lm))

    one, two = counts(1), counts(2)
    layer_params = two["language"] - one["language"]
    trainable_b, frozen_b = (18, 2) if bf16 else (16, 4)
    act_b = 2 if bf16 else 4
    f = model.freeze

    def param_bytes(n: int, frozen: bool) -> float:
        return n * (frozen_b if frozen else trainable_b)

    fixed_lm = one["language"] - layer_params  # embedding + output layer + final norm
    lm, b, s = model.language, micro_batch_size, seq_length
    kv = lm.num_query_groups * lm.head_dim
    layer_act = 1.25 * b * s * (10 * lm.hidden_size + 4 * kv + 6 * lm.ffn_hidden_size) * act_b
    logits = b * s * lm.vocab_size * (act_b + 8)
    v = model.vision
    vit_act = tiles * (v.patches_per_side ** 2 + 1) * (v.ffn_hidden_size + 4 * v.hidden_size) * act_b * 2
    fixed = (param_bytes(one["vision"], f.vision) + param_bytes(one["projector"], f.projector)
             + param_bytes(fixed_lm, f.language) + logits + vit_act)
    per_layer = param_bytes(layer_params, f.language) + layer_act
    usable = memory_gb * 1e9 * 0.95 - reserve_gb * 1e9 - fixed
    n = max(1, int(usable // per_layer))
    if max_layers is not None:
        n = min(n, max_layers)
    return {"proxy_layers": n, "memory_budget_gb": memory_gb, "fixed_gb": fixed / 1e9,
            "per_layer_gb": per_layer / 1e9, "layer_parameters": layer_params,
            "estimated_gb": (fixed + n * per_layer) / 1e9 + reserve_gb}


def device_memory_gb() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.mem_get_info()[1] / 1e9


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Print how many language layers of a model config fit one device "
                                            "(the 72B proxy of bench/gpu_perf.sh), as one JSON line.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default="nvlm_d_72b", help="model config name under configs/model/")
    p.add_argument("--seq-length", type=int, default=3200)
    p.add_argument("--micro-batch-size", type=int, default=1)
    p.add_argument("--tiles", type=int, default=7, help="image tiles per micro-batch")
    p.add_argument("--memory-gb", type=float, default=None, help="device memory (default: this GPU's; 141 without)")
    p.add_argument("--overrides", nargs="*", default=["model.freeze.vision=true"], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    from nvlm_train.config.store import load_model_config
    from nvlm_train.runtime.session import distributed_session

    model = load_model_config(args.config, args.overrides)
    with distributed_session():
        est = estimate_proxy_layers(model, args.seq_length, args.micro_batch_size, args.tiles,
                                    args.memory_gb or device_memory_gb() or 141.0)
    print(json.dumps(est))
    return 0


if __name__ == "__main__":
    sys.exit(main())
