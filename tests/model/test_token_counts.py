"""Token and FLOP counts of packed micro-batches, computed by hand: padding is no work, attention is per sample."""

from __future__ import annotations

import pytest
import torch

from nvlm_train.config.model import FreezeConfig
from nvlm_train.model.flops import flops_breakdown, model_flops
from nvlm_train.model.token_counts import TokenCounts, batch_token_counts, lengths_counts
from nvlm_train.training.metrics import throughput
from tests.test_bench_and_docker import hand_config

# Two rows of 10: [4, 3, padding 3] and [6, 4] (the collate contract: padding is its own segment).
PACKED = {"tokens": torch.zeros(2, 10, dtype=torch.long),
          "seq_boundaries": torch.tensor([[0, 4, 7, 10], [0, 6, 10, 10]]),
          "num_samples": torch.tensor([2, 2])}


def test_token_counts_of_a_packed_batch():
    c = batch_token_counts(PACKED)
    assert c == TokenCounts(real_tokens=17, padded_tokens=20, sum_sq_lengths=16 + 9 + 36 + 16, samples=4)
    assert c.padding_fraction == pytest.approx(3 / 20)
    # No boundaries: one full-length sample per row.
    assert batch_token_counts({"tokens": torch.zeros(3, 8)}) == TokenCounts(24, 24, 3 * 64, 3)
    # Sums over micro-batches; an empty sum has no padding.
    assert c + c == TokenCounts(34, 40, 154, 8)
    assert TokenCounts().padding_fraction == 0.0
    assert lengths_counts([[5], [2, 2]], 6) == TokenCounts(9, 12, 33, 3)


# hand_config's LLM: 1 layer, h 8, attention width 8, kv 4, f 16, vocab 32 (576 MACs per token in
# the linears). The packed batch above, 17 real tokens and sum L^2 = 77:
#   linears   2 * 17 * 576         = 19584
#   attention 4 * 77 * 8 / 2       =  1232   (rows x seq^2 would say 2 * 4 * 100 * 8 / 2 = 3200)
#   logits    2 * 17 * 8 * 32      =  8704
LM_FWD = 19584 + 1232 + 8704  # 29520
# With 2 tiles (ViT 87104, projector 1920 forward; ViT backward 2 x 11840 layers + 75264 patch embedding):
ALL_TRAINED_2_TILES = (87104 + 1920 + LM_FWD) + (2 * 11840 + 75264) + 2 * 1920 + 2 * LM_FWD  # 280368


def test_flops_count_real_tokens_and_attention_per_sample():
    cfg = hand_config()
    c = batch_token_counts(PACKED)
    b = flops_breakdown(cfg, c.real_tokens, 0, sum_sq_lengths=c.sum_sq_lengths, freeze=FreezeConfig())
    assert b.language_forward == LM_FWD == 29520
    assert b.total == 3 * 29520  # nothing but the LLM, trained: forward + 2x backward
    got = model_flops(cfg, c.real_tokens, 2, freeze=FreezeConfig(), sum_sq_lengths=c.sum_sq_lengths)
    assert got == ALL_TRAINED_2_TILES == 280368
    # The old count (every row one 10-token sequence, padding included) is 36480 forward for the LLM.
    assert flops_breakdown(cfg, 20, 0, 10, FreezeConfig()).language_forward == 2 * 20 * 576 + 3200 + 2 * 20 * 8 * 32
    with pytest.raises(ValueError):
        model_flops(cfg, 17, 0, sum_sq_lengths=-1)


def test_throughput_record_is_honest():
    cfg = hand_config()
    cfg.freeze = FreezeConfig()
    c = batch_token_counts(PACKED)
    r = throughput(cfg, c, tiles=2, seconds=2.0, world=1, peak_tflops=280368 / 2 / 1e12 * 10)
    assert r["tokens_per_s"] == 17 / 2  # real tokens, not 20
    assert r["tflops_per_gpu"] == pytest.approx(280368 / 2 / 1e12)
    assert r["mfu"] == pytest.approx(0.1)
    assert r["padding_fraction"] == pytest.approx(0.15)
    assert (r["real_tokens"], r["padded_tokens"]) == (17, 20)
    assert throughput(cfg, c, 2, 2.0, 2, None)["mfu"] is None
    assert throughput(cfg, c, 2, 2.0, 2, None)["tflops_per_gpu"] == pytest.approx(280368 / 4 / 1e12)
