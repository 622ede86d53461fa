"""Packed-row attention on one device: exactness of the THD path, then a micro-bench against a dense mask.

1. Exactness: a pack of samples (with trailing padding) through ``SDPAttention``'s THD path --
   ``varlen_attn`` on CUDA in bf16, per-sample causal SDPA elsewhere -- against every sample run
   alone (SDPA ``is_causal``): outputs and the q/k/v gradients; padding must come out zero.
2. Micro-bench, per LLM head shape (``72b_tp8``: 64 heads / TP8 = 8 heads, 1 KV group, head dim 128;
   ``2b``: 12 heads, 2 KV groups, head dim 128) and row length (3200, 8192), one row of packed samples:

   * ``dense``:  SDPA with a [1, 1, s, s] block-diagonal boolean mask and K/V repeated per query head
     (what the model did before THD);
   * ``varlen``: ``SDPAttention`` with ``PackedRows`` (``varlen_attn`` on CUDA);
   * ``causal``: SDPA ``is_causal`` over the whole row (flash). NOT exact for packed rows (samples see
     each other): the speed of one long sample, for reference.

   Forward + backward milliseconds (median) and peak memory above the inputs, as one JSON line.

``--smoke``: small shapes on the CPU in fp32 (what CI runs; the THD path is then per-sample SDPA).
Usage: ``python bench/packed_attention.py [--smoke] [--iters 10]``; about a minute on one H200.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nvlm_train.model.packing import packed_rows  # noqa: E402

# name: (heads, kv groups, head dim) on one rank
SHAPES = {"72b_tp8": (8, 1, 128), "2b": (12, 2, 128)}
SMOKE_SHAPES = {"smoke_gqa": (4, 2, 16), "smoke_mqa": (4, 1, 16)}
# Sample lengths of one packed row (filling it) per row length.
PACKS = {3200: [1100, 800, 600, 400, 300], 8192: [2600, 1900, 1500, 1000, 700, 492]}
SMOKE_PACKS = {96: [40, 30, 26], 160: [70, 50, 40]}


def attention_module(heads: int, groups: int, head_dim: int):
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.transformer_config import TransformerConfig

    from nvlm_train.model.attention import SDPAttention

    cfg = TransformerConfig(num_layers=1, hidden_size=heads * head_dim, num_attention_heads=heads,
                            num_query_groups=groups, kv_channels=head_dim, attention_dropout=0.0,
                            tensor_model_parallel_size=1, pipeline_model_parallel_size=1)
    return SDPAttention(cfg, 1, AttnMaskType.causal, "self")


def qkv(t: int, heads: int, groups: int, head_dim: int, dtype, device, seed: int = 0):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    make = lambda h: torch.randn(t, h, head_dim, generator=gen).to(device, dtype).requires_grad_()  # noqa: E731
    return make(heads), make(groups), make(groups)  # [t, heads, hd]


def boundaries(lengths: list[int], seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    starts = [0]
    for n in lengths:
        starts.append(starts[-1] + n)
    if starts[-1] < seq:
        starts.append(seq)
    return torch.tensor([starts]), torch.tensor([len(lengths)])


def exactness(shape: str, heads: int, groups: int, head_dim: int, lengths: list[int], pad: int, dtype, device):
    """Pack (THD path) vs samples alone: max |difference| of outputs and of q/k/v gradients."""
    seq = sum(lengths) + pad
    attn = attention_module(heads, groups, head_dim)
    p = packed_rows(*boundaries(lengths, seq), 1, seq, device=device)
    q, k, v = qkv(seq, heads, groups, head_dim, dtype, device)
    gen = torch.Generator(device="cpu").manual_seed(1)
    grad_out = torch.randn(seq, heads * head_dim, generator=gen).to(device, dtype)
    packed = attn(q, k, v, None, packed_seq_params=p)  # [t, heads * hd]
    packed.backward(grad_out)
    packed_grads = [x.grad.clone() for x in (q, k, v)]
    for x in (q, k, v):
        x.grad = None
    out_diff, grad_diff, start = 0.0, 0.0, 0
    for n in lengths:
        seg = [x[start:start + n].detach().transpose(0, 1).requires_grad_() for x in (q, k, v)]  # [h, L, hd]
        alone = F.scaled_dot_product_attention(*seg, is_causal=True, enable_gqa=heads != groups,
                                               scale=attn.softmax_scale)  # [h, L, hd]
        alone = alone.transpose(0, 1).reshape(n, -1)
        alone.backward(grad_out[start:start + n])
        out_diff = max(out_diff, (packed[start:start + n] - alone).abs().max().item())
        for g_packed, x in zip(packed_grads, seg):
            grad_diff = max(grad_diff, (g_packed[start:start + n] - x.grad.transpose(0, 1)).abs().max().item())
        start += n
    padding_zero = bool((packed[start:] == 0).all()) and all(bool((g[start:] == 0).all()) for g in packed_grads)
    uses_varlen = device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)
    tol = 2e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-5
    return {"shape": shape, "dtype": str(dtype).removeprefix("torch."), "samples": lengths, "padding": pad,
            "path": "varlen_attn" if uses_varlen else "per-sample SDPA", "max_abs_out_diff": out_diff,
            "max_abs_grad_diff": grad_diff, "padding_zero": padding_zero,
            "ok": out_diff <= tol and grad_diff <= tol and padding_zero}


def dense_mask(lengths: list[int], seq: int, device) -> torch.Tensor:
    """[1, 1, s, s] bool, True = attend: causal inside each sample (the old model/packing.py mask)."""
    seg = torch.repeat_interleave(torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device))
    causal = torch.ones(seq, seq, dtype=torch.bool, device=device).tril()
    return ((seg[:, None] == seg[None, :]) & causal)[None, None]


def methods(attn, lengths, seq, heads, groups, device):
    p = packed_rows(*boundaries(lengths, seq), 1, seq, device=device)
    rep = heads // groups

    def dense(q, k, v):
        mask = dense_mask(lengths, seq, device)
        qb, kb, vb = (x.transpose(0, 1)[None] for x in (q, k, v))  # [1, h, s, hd]
        kb, vb = kb.repeat_interleave(rep, 1), vb.repeat_interleave(rep, 1)
        return F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, scale=attn.softmax_scale)

    def varlen(q, k, v):
        return attn(q, k, v, None, packed_seq_params=p)

    def causal(q, k, v):
        qb, kb, vb = (x.transpose(0, 1)[None] for x in (q, k, v))
        return F.scaled_dot_product_attention(qb, kb, vb, is_causal=True, enable_gqa=rep > 1,
                                              scale=attn.softmax_scale)

    return {"dense": dense, "varlen": varlen, "causal": causal}


def time_fwd_bwd(fn, inputs, device, warmup: int, iters: int) -> tuple[float, float | None]:
    """(median ms of forward + backward, peak MiB above the inputs or None on CPU)."""
    def step():
        out = fn(*inputs)
        out.backward(torch.ones_like(out))
        for x in inputs:
            x.grad = None

    for _ in range(warmup):
        step()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for _ in range(iters):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else None
    return statistics.median(times), peak


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="small fp32 shapes on the CPU (CI)")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args(argv)
    from nvlm_train.runtime.cpu_runtime import maybe_cpu_runtime

    smoke = args.smoke or not torch.cuda.is_available()
    device = torch.device("cpu" if smoke else "cuda")
    dtype = torch.float32 if smoke else torch.bfloat16
    shapes, packs = (SMOKE_SHAPES, SMOKE_PACKS) if smoke else (SHAPES, PACKS)
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "dtype": str(dtype).removeprefix("torch."), "torch": torch.__version__, "smoke": smoke}
    with maybe_cpu_runtime():
        checks = []
        for name, (h, g, hd) in shapes.items():
            lengths = list(packs[min(packs)])
            checks.append(exactness(name, h, g, hd, lengths[:-1], lengths[-1], dtype, device))
            if device.type == "cuda":  # the per-sample SDPA path on CUDA too (fp32 takes it)
                checks.append(exactness(name, h, g, hd, lengths[:-1], lengths[-1], torch.float32, device))
        result["exactness"] = checks
        rows = []
        for name, (h, g, hd) in shapes.items():
            attn = attention_module(h, g, hd)
            for seq, lengths in packs.items():
                inputs = qkv(seq, h, g, hd, dtype, device)
                row = {"shape": name, "heads": h, "kv_groups": g, "head_dim": hd, "tokens": seq, "samples": lengths,
                       "varlen_path": "varlen_attn" if device.type == "cuda" else "per-sample SDPA"}
                for method, fn in methods(attn, lengths, seq, h, g, device).items():
                    ms, peak = time_fwd_bwd(fn, inputs, device, args.warmup, args.iters)
                    row[f"{method}_fwd_bwd_ms"] = round(ms, 3)
                    row[f"{method}_peak_mib"] = None if peak is None else round(peak, 1)
                row["varlen_speedup_over_dense"] = round(row["dense_fwd_bwd_ms"] / row["varlen_fwd_bwd_ms"], 2)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
        result["bench"] = rows
    result["ok"] = all(c["ok"] for c in result["exactness"])
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
