"""Our megatron InternViT equals transformers' native InternVLVisionModel (not written by us).

The reference is configured as InternViT-6B's layer type: RMSNorm, q/k RMSNorm over the full
width, LayerScale, no qkv bias, no final norm. Ours is fed uint8 tiles (normalised inside), the
reference the card's normalised floats. Checked at TP1 (no padding) and at TP2, where the tiny
model's 5 heads are zero-padded to 6 (TP-derived) or 8 (fixed multiple, the tiny config's default).
"""

from __future__ import annotations

import pytest
import torch

from tests.dist import run_ranks


def vit_worker(rank, world, tp, multiple):
    from nvlm_train.config.parallel import ParallelConfig
    from nvlm_train.config.store import load_model_config
    from nvlm_train.model.builder import build_model
    from nvlm_train.model.gather import gather_full
    from nvlm_train.runtime.initialize import initialize_distributed
    from nvlm_train.vision.tiling import normalize_pixels

    # Larger init weights than the default make the comparison sharper.
    model_cfg = load_model_config(
        "nvlm_d_tiny", ["model.init_std=0.2", f"model.vision.pad_heads_to_multiple_of={multiple}"])
    parallel = ParallelConfig(tp=tp)
    initialize_distributed(parallel, seed=3)
    built = build_model(model_cfg, parallel)
    vit = built.chunks[0].vision_model
    # uint8 tiles as the data pipeline delivers them; the reference gets the card's normalised floats.
    raw = torch.randint(0, 256, (3, 3, 112, 112), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pixels = normalize_pixels(raw)
    with torch.no_grad():
        out = vit(raw)
        assert torch.equal(out, vit(pixels))
    params = gather_full(built, model_cfg, "param")
    vision = {k[len("vision_model."):]: v for k, v in params.items() if k.startswith("vision_model.")}
    return {"out": out, "params": vision, "pixels": pixels, "heads": built.padded_vision_heads} if rank == 0 else None


def _to_hf(params: dict, heads: int, hidden: int, layers: int) -> dict:
    hd = hidden // heads
    sd = {
        "embeddings.cls_token": params["class_embedding"],
        "embeddings.position_embeddings": params["position_embedding"],
        "embeddings.patch_embeddings.projection.weight": params["patch_embedding.weight"],
        "embeddings.patch_embeddings.projection.bias": params["patch_embedding.bias"],
    }
    for i in range(layers):
        src, dst = f"decoder.layers.{i}.", f"encoder.layer.{i}."
        qkv = params[src + "self_attention.linear_qkv.weight"].reshape(heads, 3, hd, hidden)
        for j, name in enumerate("qkv"):
            sd[dst + f"attention.{name}_proj.weight"] = qkv[:, j].reshape(hidden, hidden)
        sd.update({
            dst + "attention.q_norm.weight": params[src + "self_attention.q_layernorm.weight"],
            dst + "attention.k_norm.weight": params[src + "self_attention.k_layernorm.weight"],
            dst + "attention.projection_layer.weight": params[src + "self_attention.linear_proj.weight"],
            dst + "attention.projection_layer.bias": params[src + "self_attention.linear_proj.bias"],
            dst + "lambda_1": params[src + "self_attention.layer_scale.weight"],
            dst + "lambda_2": params[src + "mlp.layer_scale.weight"],
            dst + "layernorm_before.weight": params[src + "input_layernorm.weight"],
            dst + "layernorm_after.weight": params[src + "pre_mlp_layernorm.weight"],
            dst + "mlp.fc1.weight": params[src + "mlp.linear_fc1.weight"],
            dst + "mlp.fc1.bias": params[src + "mlp.linear_fc1.bias"],
            dst + "mlp.fc2.weight": params[src + "mlp.linear_fc2.weight"],
            dst + "mlp.fc2.bias": params[src + "mlp.linear_fc2.bias"],
        })
    return sd


def _reference(params):
    from transformers.models.internvl.configuration_internvl import InternVLVisionConfig
    from transformers.models.internvl.modeling_internvl import InternVLVisionModel

    cfg = InternVLVisionConfig(
        hidden_size=80, num_hidden_layers=2, num_attention_heads=5, intermediate_size=160,
        use_qk_norm=True, norm_type="rms_norm", layer_norm_eps=1e-6, image_size=112, patch_size=14,
        attention_bias=False, use_mean_pooling=True,  # mean pooling => no final norm on hidden states
        hidden_act="gelu", attn_implementation="eager",
    )
    model = InternVLVisionModel(cfg).eval()
    missing, unexpected = model.load_state_dict(_to_hf(params, 5, 80, 2), strict=False)
    assert not unexpected and not missing, (missing, unexpected)
    return model


@pytest.mark.multirank
@pytest.mark.parametrize("tp,multiple,padded", [(1, 1, 5), (2, 1, 6), (2, 8, 8)])
def test_internvit_matches_transformers(tp, multiple, padded):
    result = run_ranks(vit_worker, tp, tp, multiple)[0]
    assert result["heads"] == padded
    ref = _reference(result["params"])
    with torch.no_grad():
        expected = ref(pixel_values=result["pixels"]).last_hidden_state[:, 1:]  # drop the class token
    assert result["out"].shape == expected.shape == (3, 64, 80)
    err = (result["out"] - expected).abs().max().item()
    assert err <= 1e-5 * max(1.0, expected.abs().max().item()), err
    # Sanity: the comparison is sensitive (a perturbed weight changes the output).
    params = dict(result["params"])
    params["decoder.layers.1.self_attention.q_layernorm.weight"] = params[
        "decoder.layers.1.self_attention.q_layernorm.weight"] * 1.5
    with torch.no_grad():
        perturbed = _reference(params)(pixel_values=result["pixels"]).last_hidden_state[:, 1:]
    assert (perturbed - expected).abs().max() > 1e-3
