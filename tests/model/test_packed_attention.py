"""Packed rows through THD attention: no leakage, exact against samples run alone, no s x s tensor.

A micro-batch of 2 rows x 96 tokens (tiny model, fp32) holds five samples and trailing padding:

    row 0: A (3 text, 2 tiles = 32 image tokens, 10 text) = 45 | B (20 text)           | pad 31
    row 1: C (2 text, 1 tile = 16, 9 text) = 27 | D (30 text) | E (25 text)            | pad 14

run as one THD pack of 192 tokens. The ``transformer_engine`` path runs with megatron-core's
attention handing its inputs to a recorder in TE's place (no TE wheel here): the test checks the exact
``PackedSeqParams`` and mask type it receives.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from tests.dist import run_ranks
from tests.model.batches import build_batch

SEQ = 96
A = [("text", 3), ("image", 2), ("text", 10)]
B = [("text", 20)]
C = [("text", 2), ("image", 1), ("text", 9)]
D = [("text", 30)]
E = [("text", 25)]
ROWS = [[A, B], [C, D, E]]
# (row, start, length, tiles before it in the batch, its tiles) per sample, by hand.
SAMPLES = [(0, 0, 45, 0, 2), (0, 45, 20, 2, 0), (1, 0, 27, 2, 1), (1, 27, 30, 3, 0), (1, 57, 25, 3, 0)]
CU = [0, 45, 65, 92, 122, 147]
CU_PADDED = [0, 45, 96, 123, 153, 192]  # row 0's padding rides on B, row 1's on E
MAX_SEQLEN = 51  # B + 31 padding


class ShapeLog(TorchDispatchMode):
    """Shapes of every tensor an op returns, forward and backward."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.shapes += [(str(func), tuple(t.shape)) for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        return out


def square_in_sequence(shapes, lengths=(SEQ, 2 * SEQ)):
    """Tensors with two dimensions as long as a row or the pack: what a dense mask or full-row scores need."""
    return [(f, s) for f, s in shapes if sum(d in lengths for d in s) >= 2]


def _batch(cfg, seed=7):
    return build_batch(ROWS, SEQ, cfg.tokens_per_tile, cfg.language.image_token_id, cfg.language.vocab_size,
                       cfg.vision.image_size, seed=seed)


def _sample_batch(batch, row, start, length, tile0, tiles):
    single = {k: batch[k][row:row + 1, start:start + length].clone()
              for k in ("tokens", "labels", "loss_mask", "position_ids")}
    single["seq_boundaries"] = torch.tensor([[0, length]])
    single["num_samples"] = torch.tensor([1])
    single["pixel_values"] = batch["pixel_values"][tile0:tile0 + tiles]
    return single


def _call(model, batch, labels=True):
    return model(batch["tokens"], batch["position_ids"], labels=batch["labels"] if labels else None,
                 pixel_values=batch["pixel_values"], seq_boundaries=batch["seq_boundaries"],
                 num_samples=batch["num_samples"])


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _real_positions(except_sample=None):
    keep = torch.zeros(2, SEQ, dtype=torch.bool)
    for i, (row, start, length, _, _) in enumerate(SAMPLES):
        if i != except_sample:
            keep[row, start:start + length] = True
    return keep


def _install_fake_te(record):
    """``impl=transformer_engine`` with megatron-core's own parallel layers in TE's place and a recorder as
    TEDotProductAttention: it logs what megatron-core's attention hands it, then computes like TE's THD."""
    from megatron.core.packed_seq_params import PackedSeqParams
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.enums import AttnMaskType

    from nvlm_train.model import specs
    from nvlm_train.model.attention import SDPAttention

    class RecordingTEAttention(SDPAttention):
        def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                    packed_seq_params=None):
            p = packed_seq_params
            record.append({
                "spec_mask": self.attn_mask_type, "mask_type": attn_mask_type, "mask_is_none": attention_mask is None,
                "q_shape": tuple(query.shape), "is_params": isinstance(p, PackedSeqParams),
                "format": None if p is None else p.qkv_format,
                "cu": None if p is None else p.cu_seqlens_q.tolist(),
                "cu_kv": None if p is None else p.cu_seqlens_kv.tolist(),
                "cu_padded": None if p is None else p.cu_seqlens_q_padded.tolist(),
                "cu_kv_padded": None if p is None else p.cu_seqlens_kv_padded.tolist(),
                "max": None if p is None else (p.max_seqlen_q, p.max_seqlen_kv),
            })
            if attn_mask_type == AttnMaskType.causal and attention_mask is not None:
                attention_mask = None  # what TE does with a mask under a non-padding mask type
            return super().forward(query, key, value, attention_mask, attn_mask_type, attention_bias, p)

    real_modules = specs._modules

    def fake_modules(impl):
        m = real_modules("torch")
        if impl != "transformer_engine":
            return m
        return specs._Modules(ColumnParallelLinear, m.column_no_bias, RowParallelLinear, RecordingTEAttention, m.norm)

    specs._modules = fake_modules
    specs.transformer_engine_available = lambda: True
    specs.te_thd_unsupported = lambda bf16: None


def packed_worker(rank, world, impl):
    from megatron.core.packed_seq_params import PackedSeqParams

    from nvlm_train.config.parallel import ParallelConfig
    from nvlm_train.config.store import load_model_config
    from nvlm_train.model.attention import SDPAttention
    from nvlm_train.model.builder import build_model
    from nvlm_train.model.gather import gather_full
    from nvlm_train.runtime.initialize import initialize_distributed

    record: list[dict] = []
    if impl == "transformer_engine":
        _install_fake_te(record)
    cfg = load_model_config("nvlm_d_tiny", [f"model.impl={impl}"])
    initialize_distributed(ParallelConfig(), seed=5, num_language_layers=cfg.language.num_layers)
    built = build_model(cfg, ParallelConfig())
    assert built.impl == impl
    model = built.chunks[0].train()
    batch = _batch(cfg)
    out: dict = {"impl": impl}

    # What the LLM's core attention receives (inputs instrumented).
    seen = []
    for module in model.language_model.modules():
        if isinstance(module, SDPAttention):
            module.register_forward_pre_hook(
                lambda m, args, kwargs: seen.append((args[3] is None, type(kwargs.get("packed_seq_params")))),
                with_kwargs=True)

    # 1. Packed forward + backward: every tensor's shape logged.
    with ShapeLog() as log:
        loss = _call(model, batch)  # [b, s]
        total = (loss * batch["loss_mask"]).sum()
        total.backward()
    out["square"] = square_in_sequence(log.shapes)
    out["llm_attention_inputs"] = seen
    out["seen_packed_type"] = all(issubclass(t, PackedSeqParams) for _, t in seen)
    packed_grads = _grads(model)
    out["packed_grads"] = gather_full(built, cfg, "grad")  # by global name, for the PP2 comparison
    model.zero_grad()
    out["record_packed"] = list(record)
    record.clear()

    with torch.no_grad():
        # 2. Changing one sample's tokens (B) or pixels (C's tile) leaves every other sample alone.
        logits = _call(model, batch, labels=False)  # [b, s, V]
        changed = {k: v.clone() for k, v in batch.items()}
        gen = torch.Generator().manual_seed(99)
        changed["tokens"][0, 45:65] = torch.randint(cfg.language.image_token_id + 1, cfg.language.vocab_size, (20,),
                                                    generator=gen)
        changed["labels"][0, 45:64] = changed["tokens"][0, 46:65]
        logits_b = _call(model, changed, labels=False)
        loss_b = _call(model, changed)
        pixels = batch["pixel_values"].clone()
        pixels[2] = torch.randn(pixels[2].shape, generator=gen)
        logits_c = _call(model, {**batch, "pixel_values": pixels}, labels=False)
        keep_b, keep_c = _real_positions(except_sample=1), _real_positions(except_sample=2)
        out["other_logits_diff_b"] = (logits_b - logits)[keep_b].abs().max().item()
        out["other_loss_diff_b"] = (loss_b - loss.detach())[keep_b].abs().max().item()
        out["own_logits_diff_b"] = (logits_b - logits)[~keep_b & _real_positions()].abs().max().item()
        out["other_logits_diff_c"] = (logits_c - logits)[keep_c].abs().max().item()
        out["own_logits_diff_c"] = (logits_c - logits)[1, 0:27].abs().max().item()

    # 3. Each sample alone (one full row each): per-sample loss sums, and the summed gradients.
    per_sample = []
    record.clear()
    for row, start, length, tile0, tiles in SAMPLES:
        single = _sample_batch(batch, row, start, length, tile0, tiles)
        alone = (_call(model, single) * single["loss_mask"]).sum()
        alone.backward()
        mask = batch["loss_mask"][row, start:start + length]
        per_sample.append(((loss[row, start:start + length] * mask).sum().item(), alone.item(), mask.sum().item()))
    out["per_sample"] = per_sample
    out["record_alone"] = list(record)
    alone_grads = _grads(model)
    out["grad_errors"] = {n: ((packed_grads[n] - g).norm().item(), g.norm().item()) for n, g in alone_grads.items()}
    out["grad_names_match"] = packed_grads.keys() == alone_grads.keys()
    out["total"] = total.item()
    return out


@pytest.fixture(scope="module", params=["torch", "transformer_engine"])
def packed(request):
    return run_ranks(packed_worker, 1, request.param)[0]


@pytest.mark.multirank
def test_other_samples_unchanged_when_one_sample_changes(packed):
    assert packed["own_logits_diff_b"] > 1e-3 and packed["own_logits_diff_c"] > 1e-3  # the change is visible
    assert packed["other_logits_diff_b"] <= 1e-6, packed["other_logits_diff_b"]
    assert packed["other_loss_diff_b"] <= 1e-6, packed["other_loss_diff_b"]
    assert packed["other_logits_diff_c"] <= 1e-6, packed["other_logits_diff_c"]


@pytest.mark.multirank
def test_packed_rows_equal_samples_alone_loss_and_gradients(packed):
    for packed_sum, alone_sum, tokens in packed["per_sample"]:
        assert tokens > 0
        assert abs(packed_sum - alone_sum) <= 1e-5 * abs(alone_sum), (packed_sum, alone_sum)
    assert packed["grad_names_match"]
    assert len(packed["grad_errors"]) > 20  # ViT, projector and LLM tensors
    for name, (err, norm) in packed["grad_errors"].items():
        assert norm > 0, name
        assert err <= 1e-5 * norm, f"{name}: |dg|={err:.3e} |g|={norm:.3e}"


@pytest.mark.multirank
def test_no_sequence_squared_tensor_for_the_llm(packed):
    assert packed["square"] == [], packed["square"][:5]
    # The LLM's attention got no mask at all, only THD parameters.
    assert packed["llm_attention_inputs"] and all(none for none, _ in packed["llm_attention_inputs"])
    assert packed["seen_packed_type"]


def test_square_detector_catches_a_dense_mask():
    """The detector the allocation test relies on flags what the old code built: a [b, 1, s, s] mask."""
    with ShapeLog() as log:
        torch.ones(SEQ, SEQ, dtype=torch.bool).triu(1).expand(2, 1, -1, -1).clone()
        torch.zeros(2 * SEQ, 64)  # one sequence-long dimension is fine
    assert square_in_sequence(log.shapes) != []
    assert square_in_sequence([("x", (2 * SEQ, 64)), ("y", (1, 2 * SEQ, 1024))]) == []


@pytest.mark.multirank
def test_transformer_engine_path_gets_thd_and_padding_causal(packed):
    from megatron.core.transformer.enums import AttnMaskType

    if packed["impl"] != "transformer_engine":
        assert packed["record_packed"] == []
        return
    calls = packed["record_packed"]
    llm = [c for c in calls if c["spec_mask"] != AttnMaskType.no_mask]
    vit = [c for c in calls if c["spec_mask"] == AttnMaskType.no_mask]
    assert len(llm) == 4 and len(vit) == 2  # one call per layer (tiny: 4 LLM, 2 ViT layers)
    for c in llm:
        assert c["spec_mask"] == c["mask_type"] == AttnMaskType.padding_causal
        assert c["mask_is_none"] and c["is_params"] and c["format"] == "thd"
        assert c["cu"] == c["cu_kv"] == CU
        assert c["cu_padded"] == c["cu_kv_padded"] == CU_PADDED
        assert c["max"] == (MAX_SEQLEN, MAX_SEQLEN)
        assert c["q_shape"] == (2 * SEQ, 4, 16)  # [t, heads, head dim]: the whole micro-batch as one pack
    for c in vit:
        assert c["mask_type"] == AttnMaskType.no_mask and c["format"] is None and c["mask_is_none"]
    # Alone, a one-sample row still goes to TE as THD (its spec is padding-causal).
    alone = [c for c in packed["record_alone"] if c["spec_mask"] != AttnMaskType.no_mask]
    assert [c["cu"] for c in alone[::4]] == [[0, n] for _, _, n, _, _ in SAMPLES]


# --------------------------------------------------------------------------------------------
# PP2: the packed micro-batch through megatron's 1F1B schedule on two stages
# --------------------------------------------------------------------------------------------

def pp_worker(rank, world):
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from nvlm_train.config.parallel import ParallelConfig
    from nvlm_train.config.store import load_model_config
    from nvlm_train.model.builder import build_model
    from nvlm_train.model.gather import gather_full
    from nvlm_train.runtime.initialize import initialize_distributed
    from nvlm_train.training.forward_step import forward_step

    cfg = load_model_config("nvlm_d_tiny")
    parallel = ParallelConfig(pp=2)
    initialize_distributed(parallel, seed=5, num_language_layers=cfg.language.num_layers)
    built = build_model(cfg, parallel)
    out = get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iter([_batch(cfg)]), model=built.chunks[0],
        num_microbatches=1, seq_length=SEQ, micro_batch_size=2, forward_only=False)
    sums = torch.stack([d["lm loss"] for d in out]).sum(0) if out else None
    grads = gather_full(built, cfg, "grad")
    return {"loss_sum": None if sums is None else sums[0].item(), "grads": grads if rank == 0 else None}


@pytest.mark.multirank
def test_pp2_packed_equals_samples_alone(packed):
    if packed["impl"] != "torch":
        pytest.skip("PP2 runs the torch layers (the TE path is checked at PP1)")
    results = run_ranks(pp_worker, 2)
    loss_sum = next(r["loss_sum"] for r in results if r["loss_sum"] is not None)
    alone_sum = sum(a for _, a, _ in packed["per_sample"])
    assert abs(loss_sum - alone_sum) <= 1e-5 * abs(alone_sum), (loss_sum, alone_sum)
    grads, ref = results[0]["grads"], packed["packed_grads"]
    assert grads.keys() == ref.keys() and len(ref) > 20
    for name, g in ref.items():
        err = (grads[name] - g).norm().item()
        assert err <= 1e-5 * g.norm().item(), f"{name}: |dg|={err:.3e} |g|={g.norm():.3e}"


def test_packed_attention_bench_smoke():
    """bench/packed_attention.py --smoke (the GPU bench's CPU mode): the THD path equals samples alone."""
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "bench/packed_attention.py", "--smoke", "--iters", "1", "--warmup", "0"],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["ok"] and r["smoke"] and len(r["exactness"]) == 2
    for check in r["exactness"]:
        assert check["max_abs_out_diff"] <= 1e-5 and check["max_abs_grad_diff"] <= 1e-5 and check["padding_zero"]
    assert {(row["shape"], row["tokens"]) for row in r["bench"]} == {
        ("smoke_gqa", 96), ("smoke_gqa", 160), ("smoke_mqa", 96), ("smoke_mqa", 160)}
    for row in r["bench"]:
        assert all(row[f"{m}_fwd_bwd_ms"] > 0 for m in ("dense", "varlen", "causal"))


def test_varlen_route_gathers_real_tokens_and_scatters_zeros(monkeypatch):
    """The CUDA varlen route's bookkeeping, on the CPU: ``varlen_attn`` is replaced by a reference that
    checks what it is handed (compacted real tokens, cu_seqlens, causal window, GQA) and computes
    per sequence; the result must equal the per-sample SDPA route, with zeros on padding."""
    import torch.nn.functional as F
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.transformer_config import TransformerConfig

    from nvlm_train.model import attention
    from nvlm_train.model.packing import packed_rows

    calls = []

    def reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, scale, window_size, enable_gqa):
        calls.append((q.shape[0], cu_q.tolist(), cu_k.tolist(), max_q, max_k, window_size, enable_gqa))
        cu = cu_q.tolist()
        return torch.cat([F.scaled_dot_product_attention(
            *(x[a:b].transpose(0, 1) for x in (q, k, v)), is_causal=window_size == (-1, 0), scale=scale,
            enable_gqa=enable_gqa).transpose(0, 1) for a, b in zip(cu[:-1], cu[1:])])

    cfg = TransformerConfig(num_layers=1, hidden_size=64, num_attention_heads=4, num_query_groups=2, kv_channels=16,
                            attention_dropout=0.0,
                            tensor_model_parallel_size=1, pipeline_model_parallel_size=1)
    attn = attention.SDPAttention(cfg, 1, AttnMaskType.causal, "self")
    p = packed_rows(torch.tensor([[0, 4, 7, 10], [0, 6, 10, 10]]), torch.tensor([2, 2]), 2, 10)
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(20, h, 16, generator=gen) for h in (4, 2, 2))
    per_sample = attn(q, k, v, None, packed_seq_params=p)  # [t, heads * hd]
    monkeypatch.setattr(attention, "varlen_attn", reference_varlen)
    monkeypatch.setattr(attention, "_varlen_applies", lambda q, p, dropout: True)
    varlen = attn(q, k, v, None, packed_seq_params=p)
    assert calls == [(17, [0, 4, 7, 13, 17], [0, 4, 7, 13, 17], 6, 6, (-1, 0), True)]
    assert torch.allclose(varlen, per_sample, atol=1e-6) and varlen.shape == (20, 64)
    assert (varlen[7:10] == 0).all() and (per_sample[7:10] == 0).all()


def test_length_groups_by_hand():
    """CPU path: samples at least 0.75x their group's longest share one causal SDPA call."""
    from nvlm_train.model.attention import length_groups

    segments = [(0, 45), (45, 20), (96, 27), (123, 30), (153, 25)]  # this file's batch
    assert length_groups(segments) == [[(0, 45)], [(123, 30), (96, 27), (153, 25)], [(45, 20)]]
    assert length_groups([]) == []


def test_all_padding_pack_gives_zeros():
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.transformer_config import TransformerConfig

    from nvlm_train.model.attention import SDPAttention
    from nvlm_train.model.packing import packed_rows

    cfg = TransformerConfig(num_layers=1, hidden_size=32, num_attention_heads=2, num_query_groups=1, kv_channels=16,
                            attention_dropout=0.0, tensor_model_parallel_size=1, pipeline_model_parallel_size=1)
    attn = SDPAttention(cfg, 1, AttnMaskType.causal, "self")
    p = packed_rows(torch.tensor([[0, 6, 6]]), torch.tensor([0]), 1, 6)
    q, k, v = torch.randn(6, 2, 16), torch.randn(6, 1, 16), torch.randn(6, 1, 16)
    out = attn(q, k, v, None, packed_seq_params=p)
    assert out.shape == (6, 32) and (out == 0).all()
