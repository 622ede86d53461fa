"""The mapping tables and transforms on their own (no checkpoint I/O)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nvlm_train.config.model import ModelConfig
from nvlm_train.convert.mapping import RULES, expand
from nvlm_train.convert.transforms import TRANSFORMS, Dims, DummyHeadError

DIMS = Dims(vit_heads=5, vit_head_dim=4, llm_heads=6, llm_groups=2, llm_head_dim=3)


RELEASED_CONFIG = Path(__file__).resolve().parents[1] / "fixtures" / "nvlm_d_72b_config.json"
RELEASED = Dims(vit_heads=2, vit_head_dim=2, llm_heads=6, llm_groups=2, llm_head_dim=3, vit_dummy_heads=3)


def test_released_vit_layout_by_hand():
    """2 real heads of 2 + 3 dummies: megatron [q0 k0 v0 q1 k1 v1] -> HF [Q0 Q1 0 0 0; K...; V...]."""
    rows = [[10.0 * h + 2 * part + r] for h in range(2) for part in range(3) for r in range(2)]  # [12, 1]
    (hf,) = TRANSFORMS["vit_qkv"].split(torch.tensor(rows), RELEASED)
    z = [0.0] * 6
    expected = []
    for part in range(3):  # Q, K, V blocks
        expected += [10.0 * h + 2 * part + r for h in range(2) for r in range(2)] + z
    assert hf.flatten().tolist() == expected
    assert torch.equal(TRANSFORMS["vit_qkv"].merge([hf], RELEASED), torch.tensor(rows))
    (norm,) = TRANSFORMS["vit_heads"].split(torch.tensor([1.0, 2, 3, 4]), RELEASED)
    assert norm.tolist() == [1, 2, 3, 4] + z
    (proj,) = TRANSFORMS["vit_proj"].split(torch.ones(3, 4), RELEASED)
    assert proj.tolist() == [[1.0] * 4 + z] * 3
    assert torch.equal(TRANSFORMS["vit_proj"].merge([proj], RELEASED), torch.ones(3, 4))
    # dummy entries of the norm weights scale channels that are always zero: dropped whatever they hold
    assert TRANSFORMS["vit_heads"].merge([torch.arange(10.0)], RELEASED).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("op,where", [("vit_qkv", (5, 0)), ("vit_qkv", (25, 0)), ("vit_proj", (1, 7))])
def test_nonzero_dummy_head_is_refused(op, where):
    t = torch.zeros(30, 4) if op == "vit_qkv" else torch.zeros(3, 10)
    t[where] = 0.5
    with pytest.raises(DummyHeadError, match="not all zero"):
        TRANSFORMS[op].merge([t], RELEASED)


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


def test_table_is_one_to_one_and_complete():
    model = ModelConfig()
    rules = expand(RULES, model)
    export = {r.mcore: (r.hf, r.op) for r in rules}
    assert len(export) == len(rules)  # each megatron tensor once
    hf_keys = [k for hf, _ in export.values() for k in hf]
    assert len(hf_keys) == len(set(hf_keys))
    assert "vision_model.encoder.layers.44.ls2" in hf_keys
    assert "language_model.model.layers.79.mlp.up_proj.weight" in hf_keys
    # 72B: every weight of the published parameter count is covered
    from nvlm_train.convert.hf_config import hf_config_for
    from nvlm_train.convert.hf_files import HFLayout, hf_param_shapes

    # the released layout stores 45 x 11,470,592 dummy-head zeros on top of the model's parameters
    for layout, total in ((HFLayout.RELEASED, 79_379_593_344), (HFLayout.INTERNVL, 78_863_416_704)):
        shapes = hf_param_shapes(hf_config_for(model, "bfloat16", None, layout=layout))
        assert set(shapes) == set(hf_keys)
        assert sum(torch.Size(s).numel() for s in shapes.values()) == total


def test_released_72b_config_derives_the_72b_preset():
    """The released config.json (verbatim fixture: llama spelling, dynamic rope scaling) gives our preset."""
    from nvlm_train.config.model import architecture_diffs
    from nvlm_train.config.store import load_model_config
    from nvlm_train.convert.hf_config import hf_prompt, model_config_from_nvlm

    preset = load_model_config("nvlm_d_72b")
    cfg = json.loads(RELEASED_CONFIG.read_text())
    assert cfg["llm_config"]["model_type"] == "llama"
    derived = model_config_from_nvlm(cfg, preset, None, image_token_id=151654)
    assert architecture_diffs(derived, preset) == []
    lang = derived.language
    assert (lang.rope_scaling_type, lang.rope_scaling_factor) == ("dynamic", 3.0)
    assert (preset.language.rope_scaling_type, preset.language.rope_scaling_factor) == ("dynamic", 3.0)
    assert derived.vision.num_attention_heads == 25
    assert hf_prompt(cfg) == ("nvlm_d", "Answer the questions.")
