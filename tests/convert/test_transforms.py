"""The mapping tables and transforms on their own (no checkpoint I/O)."""

from __future__ import annotations

import torch

from nvlm_train.config.model import ModelConfig
from nvlm_train.convert.mapping import HF_TO_MCORE, MCORE_TO_HF, expand
from nvlm_train.convert.transforms import TRANSFORMS, Dims

DIMS = Dims(vit_heads=5, vit_head_dim=4, llm_heads=6, llm_groups=2, llm_head_dim=3)


def test_split_then_merge_is_identity():
    gen = torch.Generator().manual_seed(0)
    cases = {"copy": torch.randn(7, 3, generator=gen), "vit_qkv": torch.randn(60, 20, generator=gen),
             "gqa_qkv": torch.randn(30, 18, generator=gen), "gate_up": torch.randn(8, 5, generator=gen)}
    for op, full in cases.items():
        parts = TRANSFORMS[op].split(full, DIMS)
        assert torch.equal(TRANSFORMS[op].merge(parts, DIMS), full), op
    bias = torch.randn(30, generator=gen)
    assert torch.equal(TRANSFORMS["gqa_qkv"].merge(TRANSFORMS["gqa_qkv"].split(bias, DIMS), DIMS), bias)


def test_vit_qkv_orders():
    # megatron rows: per head h: [q_h; k_h; v_h]; HF rows: [all q; all k; all v]
    h, hd = DIMS.vit_heads, DIMS.vit_head_dim
    rows = torch.tensor([[kind * 100 + head * 10 + r] for head in range(h) for kind in range(3) for r in range(hd)])
    (hf,) = TRANSFORMS["vit_qkv"].split(rows, DIMS)
    expected = torch.tensor([[kind * 100 + head * 10 + r] for kind in range(3) for head in range(h) for r in range(hd)])
    assert torch.equal(hf, expected)


def test_gqa_qkv_groups():
    g, q, hd = DIMS.llm_groups, DIMS.llm_heads // DIMS.llm_groups, DIMS.llm_head_dim
    qh = torch.arange(g * q * hd).float()
    kh = 1000 + torch.arange(g * hd).float()
    vh = 2000 + torch.arange(g * hd).float()
    fused = TRANSFORMS["gqa_qkv"].merge([qh, kh, vh], DIMS)
    group0 = fused[: (q + 2) * hd]
    assert torch.equal(group0[: q * hd], qh[: q * hd])  # the group's q heads first
    assert torch.equal(group0[q * hd: (q + 1) * hd], kh[:hd]) and torch.equal(group0[(q + 1) * hd:], vh[:hd])


def test_tables_are_inverse_and_complete():
    model = ModelConfig()
    export = {r.mcore: (r.hf, r.op) for r in expand(MCORE_TO_HF, model)}
    imp = {r.mcore: (r.hf, r.op) for r in expand(HF_TO_MCORE, model)}
    assert export == imp
    hf_keys = [k for hf, _ in export.values() for k in hf]
    assert len(hf_keys) == len(set(hf_keys))
    assert "vision_model.encoder.layers.44.ls2" in hf_keys
    assert "language_model.model.layers.79.mlp.up_proj.weight" in hf_keys
    # 72B: every weight of DESIGN.md's parameter count is covered
    from nvlm_train.convert.hf_config import hf_config_for
    from nvlm_train.hf.export_files import hf_param_shapes

    shapes = hf_param_shapes(hf_config_for(model, "bfloat16", None))
    assert set(shapes) == set(hf_keys)
    total = sum(torch.Size(s).numel() for s in shapes.values())
    assert total == 78_863_416_704


def test_published_72b_config_derives_the_72b_preset():
    from nvlm_train.config.store import load_model_config
    from nvlm_train.convert.hf_config import architecture_diffs, model_config_from_nvlm
    from nvlm_train.hf.export_files import build_hf_config, nvlm_d_72b_spec

    preset = load_model_config("nvlm_d_72b")
    cfg = build_hf_config(nvlm_d_72b_spec())
    cfg.pop("img_context_token_id")  # the published config.json has none: found via the tokenizer instead
    cfg.pop("projector_intermediate_size")
    derived = model_config_from_nvlm(cfg, preset, None, image_token_id=151654)
    assert architecture_diffs(derived, preset) == []
