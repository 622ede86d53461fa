"""Loss and full gradients equal at TP1, TP2, PP2 (even and uneven splits), TP2 x PP2 (tiny model, gloo, fp32)."""

from __future__ import annotations

import pytest
import torch

from tests.dist import run_ranks
from tests.model.batches import PARITY_ROWS, build_batch

SEQ = 96


def _batches(model_cfg):
    return [
        build_batch(rows, SEQ, model_cfg.tokens_per_tile, model_cfg.language.image_token_id,
                    model_cfg.language.vocab_size, model_cfg.vision.image_size, seed=10 + i)
        for i, rows in enumerate(PARITY_ROWS)
    ]


def parity_worker(rank, world, tp, pp, vpp, first_stage_layers=None):
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from nvlm_train.config.parallel import ParallelConfig
    from nvlm_train.config.store import load_model_config
    from nvlm_train.model.builder import build_model
    from nvlm_train.model.gather import gather_full
    from nvlm_train.runtime.initialize import initialize_distributed
    from nvlm_train.training.forward_step import forward_step

    model_cfg = load_model_config("nvlm_d_tiny")
    parallel = ParallelConfig(tp=tp, pp=pp, vpp=vpp, first_stage_layers=first_stage_layers)
    initialize_distributed(parallel, seed=1, num_language_layers=model_cfg.language.num_layers)
    built = build_model(model_cfg, parallel)
    batches = _batches(model_cfg)
    iterators = [iter(batches) for _ in built.chunks] if len(built.chunks) > 1 else iter(batches)
    out = get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iterators,
        model=built.chunks if len(built.chunks) > 1 else built.chunks[0],
        num_microbatches=len(batches),
        seq_length=SEQ,
        micro_batch_size=2,
        forward_only=False,
    )
    depth = sum(len(c.language_model.decoder.layers) for c in built.chunks)
    sums = torch.stack([d["lm loss"] for d in out]).sum(0) if out else None
    grads = gather_full(built, model_cfg, "grad")
    params = gather_full(built, model_cfg, "param")
    if rank != 0:
        grads = params = None
    return {"loss_sum_tokens": sums, "grads": grads, "params": params, "layers_here": depth}


def _run(tp, pp, vpp=None, first_stage_layers=None, layers_per_stage=None):
    results = run_ranks(parity_worker, tp * pp, tp, pp, vpp, first_stage_layers)
    if layers_per_stage is not None:  # ranks are TP-fastest: rank r is stage r // tp
        assert [r["layers_here"] for r in results[::tp]] == layers_per_stage
    last = [r["loss_sum_tokens"] for r in results if r["loss_sum_tokens"] is not None]
    loss_sum, tokens = last[0]
    return loss_sum / tokens, tokens, results[0]["grads"], results[0]["params"]


@pytest.fixture(scope="module")
def reference():
    return _run(1, 1)


def _assert_same(ref, other):
    loss_ref, tokens_ref, grads_ref, params_ref = ref
    loss, tokens, grads, params = other
    assert tokens == tokens_ref
    assert abs(loss - loss_ref) <= 1e-5 * abs(loss_ref), (loss, loss_ref)
    assert grads.keys() == grads_ref.keys()
    for name, g_ref in grads_ref.items():
        assert params[name].shape == params_ref[name].shape, name
        assert torch.equal(params[name], params_ref[name]), f"init differs for {name}"
        g = grads[name]
        err = (g - g_ref).norm().item()
        assert err <= 1e-5 * g_ref.norm().item() + 1e-12, f"{name}: |dg|={err:.3e} |g|={g_ref.norm():.3e}"


@pytest.mark.multirank
def test_reference_is_meaningful(reference):
    loss, tokens, grads, _ = reference
    assert tokens > 100 and 5.0 < loss < 8.0  # ~ln(1024) at init
    # Every trainable tensor receives a gradient, including the vision tower through the images.
    zero = [n for n, g in grads.items() if g.abs().sum() == 0]
    assert zero == [], zero


@pytest.mark.multirank
@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2), (2, 2)], ids=["tp2", "pp2", "tp2pp2"])
def test_parity_with_tp1(reference, tp, pp):
    _assert_same(reference, _run(tp, pp))


@pytest.mark.multirank
def test_parity_interleaved_pipeline(reference):
    _assert_same(reference, _run(1, 2, vpp=2))


@pytest.mark.multirank
def test_parity_uneven_pipeline_split(reference):
    """The first stage (ViT + projector) holds 1 of the 4 LLM layers, the last stage 3."""
    _assert_same(reference, _run(1, 2, first_stage_layers=1, layers_per_stage=[1, 3]))
