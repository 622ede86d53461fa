import pytest
import torch

from nvlm_train.hf.configuration_intern_vit import InternVisionConfig
from nvlm_train.hf.modeling_intern_vit import InternVisionModel
from tests.fixtures.hf_builders import randomize_


def _ours(heads=5, head_dim=8, layers=2, image_size=56, seed=0, dummy=0):
    cfg = InternVisionConfig(
        hidden_size=heads * head_dim, num_attention_heads=heads, intermediate_size=64,
        num_hidden_layers=layers, image_size=image_size, patch_size=14, num_dummy_heads=dummy,
    )
    return randomize_(InternVisionModel(cfg).float().eval(), seed=seed)


def _native_from_ours(ours):
    native_mod = pytest.importorskip("transformers.models.internvl.modeling_internvl")  # transformers >= 4.52
    InternVLVisionConfig = native_mod.InternVLVisionConfig
    InternVLVisionModel = native_mod.InternVLVisionModel
    c = ours.config
    ncfg = InternVLVisionConfig(
        hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads, intermediate_size=c.intermediate_size,
        image_size=c.image_size, patch_size=c.patch_size, norm_type="rms_norm", use_qk_norm=True,
        attention_bias=False, layer_scale_init_value=0.1, use_mean_pooling=True,
        use_absolute_position_embeddings=True, layer_norm_eps=c.layer_norm_eps, hidden_act="gelu",
        attention_dropout=0.0, projection_dropout=0.0, hidden_dropout_prob=0.0,
    )
    ncfg._attn_implementation = "eager"
    native = InternVLVisionModel(ncfg).float().eval()
    sd = ours.state_dict()
    width = c.hidden_size
    mapped = {
        "embeddings.cls_token": sd["embeddings.class_embedding"],
        "embeddings.position_embeddings": sd["embeddings.position_embedding"],
        "embeddings.patch_embeddings.projection.weight": sd["embeddings.patch_embedding.weight"],
        "embeddings.patch_embeddings.projection.bias": sd["embeddings.patch_embedding.bias"],
    }
    for i in range(c.num_hidden_layers):
        src, dst = f"encoder.layers.{i}.", f"encoder.layer.{i}."
        # rows: all Q; all K; all V, each with the dummy heads (if any) after the real ones
        q, k, v = (t[:width] for t in sd[src + "attn.qkv.weight"].chunk(3, dim=0))
        mapped.update({
            dst + "attention.q_proj.weight": q,
            dst + "attention.k_proj.weight": k,
            dst + "attention.v_proj.weight": v,
            dst + "attention.q_norm.weight": sd[src + "attn.q_norm.weight"][:width],
            dst + "attention.k_norm.weight": sd[src + "attn.k_norm.weight"][:width],
            dst + "attention.projection_layer.weight": sd[src + "attn.proj.weight"][:, :width],
            dst + "attention.projection_layer.bias": sd[src + "attn.proj.bias"],
            dst + "mlp.fc1.weight": sd[src + "mlp.fc1.weight"],
            dst + "mlp.fc1.bias": sd[src + "mlp.fc1.bias"],
            dst + "mlp.fc2.weight": sd[src + "mlp.fc2.weight"],
            dst + "mlp.fc2.bias": sd[src + "mlp.fc2.bias"],
            dst + "layernorm_before.weight": sd[src + "norm1.weight"],
            dst + "layernorm_after.weight": sd[src + "norm2.weight"],
            dst + "lambda_1": sd[src + "ls1"],
            dst + "lambda_2": sd[src + "ls2"],
        })
    native.load_state_dict(mapped, strict=True)
    return native


def test_released_layout_shapes_by_default():
    """Without num_dummy_heads in the config, the released layout: 7 dummy heads of 8 (5 + 7 = 12)."""
    cfg = InternVisionConfig(hidden_size=40, num_attention_heads=5, intermediate_size=64, num_hidden_layers=1,
                             image_size=56, patch_size=14)
    shapes = {k: tuple(v.shape) for k, v in InternVisionModel(cfg).state_dict().items()}
    assert shapes["encoder.layers.0.attn.qkv.weight"] == (3 * 12 * 8, 40)
    assert shapes["encoder.layers.0.attn.q_norm.weight"] == (96,)
    assert shapes["encoder.layers.0.attn.k_norm.weight"] == (96,)
    assert shapes["encoder.layers.0.attn.proj.weight"] == (40, 96)
    assert shapes["encoder.layers.0.attn.proj.bias"] == (40,)


def test_key_names_and_shapes():
    m = _ours(heads=5, head_dim=8, layers=1)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        "embeddings.class_embedding": (1, 1, 40),
        "embeddings.patch_embedding.weight": (40, 3, 14, 14),
        "embeddings.patch_embedding.bias": (40,),
        "embeddings.position_embedding": (1, 17, 40),
        "encoder.layers.0.attn.qkv.weight": (120, 40),
        "encoder.layers.0.attn.q_norm.weight": (40,),
        "encoder.layers.0.attn.k_norm.weight": (40,),
        "encoder.layers.0.attn.proj.weight": (40, 40),
        "encoder.layers.0.attn.proj.bias": (40,),
        "encoder.layers.0.mlp.fc1.weight": (64, 40),
        "encoder.layers.0.mlp.fc1.bias": (64,),
        "encoder.layers.0.mlp.fc2.weight": (40, 64),
        "encoder.layers.0.mlp.fc2.bias": (40,),
        "encoder.layers.0.norm1.weight": (40,),
        "encoder.layers.0.norm2.weight": (40,),
        "encoder.layers.0.ls1": (40,),
        "encoder.layers.0.ls2": (40,),
    }


@pytest.mark.parametrize(
    "heads,head_dim,pixels,dummy",
    # 84 px: position embeddings interpolated from the 4x4 grid; 7 dummy heads: the released layout
    [(5, 8, 56, 0), (3, 16, 56, 0), (5, 8, 84, 0), (5, 8, 56, 7), (3, 16, 84, 7)],
)
def test_matches_transformers_internvl_vision(heads, head_dim, pixels, dummy):
    ours = _ours(heads=heads, head_dim=head_dim, layers=2, image_size=56, seed=heads, dummy=dummy)
    native = _native_from_ours(ours)
    pixel_values = torch.randn(3, 3, pixels, pixels, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = ours(pixel_values=pixel_values).last_hidden_state
        b = native(pixel_values=pixel_values).last_hidden_state
    assert a.shape == (3, 1 + (pixels // 14) ** 2, heads * head_dim)
    assert a.abs().mean() > 0.1  # not trivially small
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_hidden_states_and_tuple_output():
    m = _ours(layers=2)
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        out = m(pixel_values=x, output_hidden_states=True)
        tup = m(pixel_values=x, return_dict=False)
    assert len(out.hidden_states) == 3
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)
    assert torch.equal(tup[0], out.last_hidden_state)
    assert torch.equal(out.pooler_output, out.last_hidden_state[:, 0])
