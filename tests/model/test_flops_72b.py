"""Model FLOPs of one NVLM-D-72B SFT micro-batch, counted by hand from the published shapes.

One row of 3200 tokens holding one 7-tile image (6 tiles + thumbnail); SFT freezes the ViT, so
the ViT runs forward only, the projector and the LLM forward + backward (2x).
"""

from __future__ import annotations

from nvlm_train.config.model import FreezeConfig
from nvlm_train.config.store import load_model_config
from nvlm_train.model.flops import model_flops


def test_72b_sft_micro_batch_flops_by_hand():
    # InternViT-6B, per 448 px tile: 1024 patches + class token, width 3200, MLP 12800, 45 layers.
    patch_embed = 2 * 1024 * (3 * 14 * 14) * 3200
    vit_linears = 2 * 1025 * (3 * 3200 * 3200 + 3200 * 3200 + 2 * 3200 * 12800)
    vit_attention = 4 * 1025 * 1025 * 3200
    vit_tile = patch_embed + 45 * (vit_linears + vit_attention)
    # mlp1 per tile: 256 tokens, 12800 -> 29568 -> 8192.
    projector_tile = 2 * 256 * (12800 * 29568 + 29568 * 8192)
    # Qwen2-72B on 3200 tokens: q/o 8192x8192, k/v 8192x1024 (8 groups x 128), SwiGLU 3 x 8192x29568,
    # causal attention counted over half the 3200^2 scores, logits over 152064 entries.
    llm_linears = 2 * 3200 * (2 * 8192 * 8192 + 2 * 8192 * 1024 + 3 * 8192 * 29568)
    llm_attention = 4 * 3200 * 3200 * 8192 // 2
    logits = 2 * 3200 * 8192 * 152064
    llm = 80 * (llm_linears + llm_attention) + logits
    expected = 7 * vit_tile + 3 * 7 * projector_tile + 3 * llm

    model = load_model_config("nvlm_d_72b")
    sft = FreezeConfig(vision=True, projector=False, language=False)
    got = model_flops(model, tokens=3200, tiles=7, seq_length=3200, freeze=sft)
    assert got == float(expected)
    assert 1.45e15 < got < 1.55e15  # ~1.5 PFLOP per SFT micro-batch
    # Pretraining (only the projector trains): the LLM still back-propagates to its inputs (1x,
    # attention 2x), and the ViT runs forward only.
    pre = FreezeConfig(vision=True, projector=False, language=True)
    llm_input_grads = 80 * (llm_linears + 2 * llm_attention) + logits
    assert model_flops(model, 3200, 7, 3200, freeze=pre) == float(
        7 * vit_tile + 3 * 7 * projector_tile + llm + llm_input_grads)
