"""mcore-to-hf export speed and memory against ``safetensors.torch.save_file`` of the same tensors.

Builds a synthetic many-layer checkpoint (our tiny NVLM-D with a wide, deep LLM) with megatron, then in
separate subprocesses (clean RSS): (1) our streaming export, (2) ``save_file`` of the exported tensors,
already in memory, into shards of the same grouping on the same disk (the write-bandwidth bound).
Prints one JSON line: GB/s of both, their ratio (target >= 0.7) and peak RSS vs the largest shard
(target < 2x). Usage: ``python bench/convert_throughput.py [--layers 48 --hidden 640 --shard-size 512M]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

EXPORT = """
import json, sys, time
from pathlib import Path
import transformers, nvlm_train.hf.modeling_nvlm_d  # noqa: F401  (imported by the shape check)
from nvlm_train.convert.export import ExportOptions, export_checkpoint
def hwm():  # this process's own high-water RSS (ru_maxrss would inherit the parent's across fork/exec)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) * 1024
base = hwm()
r = export_checkpoint(ExportOptions(Path(sys.argv[1]), Path(sys.argv[2]), dtype=sys.argv[4] or None,
                                    max_shard_bytes=int(sys.argv[3]), progress=False))
peak = hwm()
print(json.dumps(dict(seconds=r.seconds, bytes=r.bytes_written, base_rss=base, peak_rss=peak, shards=r.num_shards)))
"""

SAVE_FILE = """
import json, os, resource, sys, time
from pathlib import Path
from safetensors.torch import load_file, save_file
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
index = json.loads((src / "model.safetensors.index.json").read_text())
shards = {name: load_file(str(src / name)) for name in sorted(set(index["weight_map"].values()))}
shards = {n: {k: v.clone() for k, v in s.items()} for n, s in shards.items()}  # in memory, not mmapped
dst.mkdir(parents=True, exist_ok=True)
start = time.perf_counter()
for name, tensors in shards.items():
    save_file(tensors, str(dst / name), metadata={"format": "pt"})
seconds = time.perf_counter() - start
total = sum(t.numel() * t.element_size() for s in shards.values() for t in s.values())
largest = max(sum(t.numel() * t.element_size() for t in s.values()) for s in shards.values())
print(json.dumps(dict(seconds=seconds, bytes=total, largest_shard=largest)))
"""


def make_checkpoint(out: Path, layers: int, hidden: int) -> int:
    """A synthetic checkpoint saved by megatron (one rank, this process); returns its tensor bytes."""
    import torch
    import yaml

    from nvlm_train.checkpoint import dist as ckpt
    from nvlm_train.checkpoint.layout import resolve_checkpoint
    from nvlm_train.checkpoint.reader import DistCheckpointReader
    from nvlm_train.config.choices import to_plain
    from nvlm_train.config.parallel import ParallelConfig
    from nvlm_train.config.store import load_model_config
    from nvlm_train.data.tokenizer import build_demo_tokenizer
    from nvlm_train.model.builder import build_model
    from nvlm_train.runtime.session import distributed_session

    model = load_model_config("nvlm_d_tiny", [
        f"model.language.num_layers={layers}", f"model.language.hidden_size={hidden}",
        "model.language.num_attention_heads=8", f"model.language.ffn_hidden_size={3 * hidden}",
        "model.language.vocab_size=8192"])
    with distributed_session():
        built = build_model(model, ParallelConfig(), initialize=False)
        with torch.no_grad():
            for i, p in enumerate(built.chunks[0].parameters()):
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(i))
        cfg = {"model": to_plain(model), "data": {"tokenizer_dir": str(build_demo_tokenizer())}}
        ckpt.save_checkpoint(out, built.chunks, None, None, {}, ckpt.TrainingState(iteration=1),
                             yaml.safe_dump(cfg), keep_last=1)
    return DistCheckpointReader(resolve_checkpoint(out)[0]).nbytes()


def _run(code: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-4000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.upper().rstrip("B")
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=48)
    ap.add_argument("--hidden", type=int, default=640)
    ap.add_argument("--shard-size", type=_size, default=512 << 20)
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default=None, help="export dtype (default: keep fp32)")
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs of each; the best is reported")
    ap.add_argument("--workdir", type=Path, default=None, help="where to write (default: a temp dir, removed)")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="convert_bench_"))
    try:
        size = make_checkpoint(work / "ckpt", args.layers, args.hidden)
        runs_ours, runs_ref = [], []
        for _ in range(max(1, args.repeats)):  # alternate, so both see the same machine load
            shutil.rmtree(work / "hf", ignore_errors=True)
            runs_ours.append(_run(EXPORT, str(work / "ckpt"), str(work / "hf"), str(args.shard_size), args.dtype or ""))
            shutil.rmtree(work / "ref", ignore_errors=True)
            runs_ref.append(_run(SAVE_FILE, str(work / "hf"), str(work / "ref")))
        ours = min(runs_ours, key=lambda r: r["seconds"])
        ours["peak_rss"] = max(r["peak_rss"] for r in runs_ours)
        ref = min(runs_ref, key=lambda r: r["seconds"])
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    ours_gbps = ours["bytes"] / ours["seconds"] / 1e9
    ref_gbps = ref["bytes"] / ref["seconds"] / 1e9
    result = {
        "checkpoint_gb": round(size / 1e9, 3),
        "exported_gb": round(ours["bytes"] / 1e9, 3),
        "shards": ours["shards"],
        "largest_shard_mb": round(ref["largest_shard"] / 1e6, 1),
        "export_gb_per_s": round(ours_gbps, 3),
        "save_file_gb_per_s": round(ref_gbps, 3),
        "ratio_vs_save_file": round(ours_gbps / ref_gbps, 3),
        "peak_rss_mb": round(ours["peak_rss"] / 1e6, 1),
        "rss_after_imports_mb": round(ours["base_rss"] / 1e6, 1),
        "peak_rss_over_largest_shard": round(ours["peak_rss"] / ref["largest_shard"], 3),
        "export_seconds": [round(r["seconds"], 2) for r in runs_ours],
        "save_file_seconds": [round(r["seconds"], 2) for r in runs_ref],
        "targets": {"ratio_vs_save_file": ">= 0.7", "peak_rss_over_largest_shard": "< 2"},
    }
    result["meets_targets"] = result["ratio_vs_save_file"] >= 0.7 and result["peak_rss_over_largest_shard"] < 2
    print(json.dumps(result))


if __name__ == "__main__":
    main()
