"""Freezing removes gradients from whole towers; activation recomputation changes no numbers."""

from __future__ import annotations

import pytest
import torch

from tests.dist import run_ranks
from tests.model.batches import PARITY_ROWS, build_batch


def grads_worker(rank, world, overrides):
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from nvlm_train.config.parallel import ParallelConfig
    from nvlm_train.config.store import load_model_config
    from nvlm_train.model.builder import build_model
    from nvlm_train.runtime.initialize import initialize_distributed
    from nvlm_train.training.forward_step import forward_step

    cfg = load_model_config("nvlm_d_tiny", overrides)
    initialize_distributed(ParallelConfig(), seed=2)
    chunk = build_model(cfg, ParallelConfig()).chunks[0]
    batch = build_batch(PARITY_ROWS[0], 96, cfg.tokens_per_tile, cfg.language.image_token_id,
                        cfg.language.vocab_size, cfg.vision.image_size, seed=4)
    chunk.train()
    out = get_forward_backward_func()(forward_step_func=forward_step, data_iterator=iter([batch]), model=chunk,
                                      num_microbatches=1, seq_length=96, micro_batch_size=2)
    grads = {n: (None if p.grad is None else p.grad.clone()) for n, p in chunk.named_parameters()}
    trainable = {n for n, p in chunk.named_parameters() if p.requires_grad}
    return {"loss": out[0]["lm loss"], "grads": grads, "trainable": trainable}


@pytest.mark.multirank
def test_pretrain_freezing_trains_only_the_projector():
    r = run_ranks(grads_worker, 1, ["model.freeze.vision=true", "model.freeze.language=true"])[0]
    assert r["trainable"] and all(n.startswith("projector.") for n in r["trainable"])
    for name, g in r["grads"].items():
        if name.startswith("projector."):
            assert g is not None and g.abs().sum() > 0, name
        else:
            assert g is None, f"frozen {name} received a gradient"


@pytest.mark.multirank
def test_recompute_gives_identical_gradients():
    base = run_ranks(grads_worker, 1, [])[0]
    full = run_ranks(grads_worker, 1, ["model.recompute.vision=full", "model.recompute.language=full"])[0]
    sel = run_ranks(grads_worker, 1, ["model.recompute.language=selective"])[0]
    for other in (full, sel):
        assert torch.allclose(other["loss"], base["loss"], rtol=1e-6)
        for name, g in base["grads"].items():
            assert torch.allclose(other["grads"][name], g, rtol=1e-5, atol=1e-7), name
