import json
from pathlib import Path

import pytest
import torch
from transformers import Qwen2ForCausalLM

from nvlm_train.convert.hf_files import hf_param_shapes
from nvlm_train.hf.configuration_nvlm_d import NVLM_D_Config
from nvlm_train.hf.modeling_nvlm_d import NVLM_D_Model, pixel_shuffle
from tests.fixtures.hf_builders import build_tiny_model, released_72b_hf_config

IMG = 3  # image-context token id in the tiny spec


@pytest.fixture(scope="module")
def model():
    return build_tiny_model(seed=0)


def _fresh_qwen2(model):
    lm = Qwen2ForCausalLM(model.config.llm_config).float().eval()
    lm.load_state_dict(model.language_model.state_dict(), strict=True)
    return lm


def _ids_with_images(rows, tiles_per_row, tokens_per_tile, seed=0):
    """[rows, seq] ids: text tokens (ids >= 10) with runs of image-context tokens."""
    gen = torch.Generator().manual_seed(seed)
    seqs = []
    for tiles in tiles_per_row:
        seq = torch.randint(10, 300, (4,), generator=gen).tolist()
        for _ in range(tiles):
            seq += [IMG] * tokens_per_tile + torch.randint(10, 300, (2,), generator=gen).tolist()
        seqs.append(seq)
    length = max(len(s) for s in seqs)
    return torch.tensor([s + [0] * (length - len(s)) for s in seqs])


def test_text_logits_equal_plain_qwen2(model):
    lm = _fresh_qwen2(model)
    ids = torch.randint(10, 300, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(input_ids=ids).logits
        ref = lm(input_ids=ids).logits
    torch.testing.assert_close(ours, ref, atol=0, rtol=0)


def test_extract_feature_pipeline(model):
    pv = torch.randn(3, 3, 56, 56)
    with torch.no_grad():
        feats = model.extract_feature(pv)
        vit = model.vision_model(pixel_values=pv).last_hidden_state[:, 1:]  # drop class token
        grid = vit.reshape(3, 4, 4, -1)
        ref = model.mlp1(pixel_shuffle(grid, 0.5, "v2").reshape(3, 4, -1))
    assert model.num_image_token == 4
    assert feats.shape == (3, 4, model.config.llm_config.hidden_size)
    torch.testing.assert_close(feats, ref, atol=0, rtol=0)


def test_image_embeddings_land_at_vision_pad_positions_in_order(model):
    pv = torch.randn(3, 3, 56, 56)
    ids = _ids_with_images(2, [1, 2], model.num_image_token)
    with torch.no_grad():
        feats = model.extract_feature(pv).reshape(-1, model.config.llm_config.hidden_size)
        embeds = model.build_inputs_embeds(ids, pixel_values=pv, image_token_id=IMG)
        text = model.get_input_embeddings()(ids)
    positions = (ids == IMG).nonzero().tolist()  # row-major
    assert len(positions) == feats.shape[0] == 12
    for n, (b, s) in enumerate(positions):
        assert torch.equal(embeds[b, s], feats[n])
    keep = ids != IMG
    assert torch.equal(embeds[keep], text[keep])

    lm = _fresh_qwen2(model)
    with torch.no_grad():
        ours = model(pixel_values=pv, input_ids=ids, image_token_id=IMG).logits
        ref = lm(inputs_embeds=embeds).logits
    torch.testing.assert_close(ours, ref, atol=0, rtol=0)


def test_count_mismatch_names_both_counts(model):
    pv = torch.randn(2, 3, 56, 56)
    ids = _ids_with_images(1, [1], model.num_image_token)
    msg = r"image-context tokens in input_ids \(4\).*\(8 = 2 tiles x 4 tokens"
    with pytest.raises(ValueError, match=msg):
        model(pixel_values=pv, input_ids=ids, image_token_id=IMG)


def test_image_flags_drop_dummy_tiles(model):
    pv = torch.randn(3, 3, 56, 56)
    ids = _ids_with_images(1, [2], model.num_image_token)
    flags = torch.tensor([1, 0, 1])
    with torch.no_grad():
        a = model(pixel_values=pv, input_ids=ids, image_flags=flags, image_token_id=IMG).logits
        b = model(pixel_values=pv[[0, 2]], input_ids=ids, image_token_id=IMG).logits
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_loss_matches_qwen2_and_backward_with_checkpointing():
    model = build_tiny_model(seed=1).train()
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    assert model.vision_model.encoder.gradient_checkpointing
    pv = torch.randn(1, 3, 56, 56)
    ids = _ids_with_images(1, [1], model.num_image_token)
    labels = ids.clone()
    labels[ids == IMG] = -100
    out = model(pixel_values=pv, input_ids=ids, labels=labels, image_token_id=IMG)
    with torch.no_grad():
        embeds = model.build_inputs_embeds(ids, pixel_values=pv, image_token_id=IMG)
        ref = _fresh_qwen2(model)(inputs_embeds=embeds, labels=labels).loss
    torch.testing.assert_close(out.loss.detach(), ref, atol=1e-6, rtol=1e-6)
    out.loss.backward()
    assert model.mlp1[1].weight.grad is not None
    assert model.vision_model.encoder.layers[0].attn.qkv.weight.grad is not None


def test_missing_image_token_id_is_clear():
    model = build_tiny_model(seed=2)
    model.img_context_token_id = None
    model.config.img_context_token_id = None
    with pytest.raises(ValueError, match="image-context token id unknown"):
        model(pixel_values=torch.randn(1, 3, 56, 56), input_ids=torch.tensor([[5, 3, 3, 3, 3]]))


# The released nvidia/NVLM-D-72B config.json, verbatim (a copy of shared/reference/).
RELEASED_CONFIG = Path(__file__).resolve().parents[1] / "fixtures" / "nvlm_d_72b_config.json"


def _meta_shapes(config: dict) -> dict:
    with torch.device("meta"):
        model = NVLM_D_Model(NVLM_D_Config(**{k: v for k, v in config.items() if k not in ("auto_map",
                                                                                           "architectures")}))
    return {k: tuple(t.shape) for k, t in model.state_dict().items()}


@pytest.mark.parametrize("source", ["released config.json", "our 72B spec"])
def test_72b_shapes_and_parameter_count(source):
    """The released NVLM-D-72B layout (the released files): 7 zero dummy ViT heads appended."""
    if source == "released config.json":
        shapes = _meta_shapes(json.loads(RELEASED_CONFIG.read_text()))
    else:
        shapes = hf_param_shapes(released_72b_hf_config())
    for key, shape in {
        "vision_model.embeddings.class_embedding": (1, 1, 3200),
        "vision_model.embeddings.patch_embedding.weight": (3200, 3, 14, 14),
        "vision_model.embeddings.position_embedding": (1, 1025, 3200),
        "vision_model.encoder.layers.44.attn.qkv.weight": (12288, 3200),
        "vision_model.encoder.layers.44.attn.q_norm.weight": (4096,),
        "vision_model.encoder.layers.44.attn.k_norm.weight": (4096,),
        "vision_model.encoder.layers.44.attn.proj.weight": (3200, 4096),
        "vision_model.encoder.layers.44.attn.proj.bias": (3200,),
        "vision_model.encoder.layers.44.ls2": (3200,),
        "mlp1.0.weight": (12800,),
        "mlp1.0.bias": (12800,),
        "mlp1.1.weight": (29568, 12800),
        "mlp1.3.weight": (8192, 29568),
        "language_model.model.embed_tokens.weight": (152064, 8192),
        "language_model.model.layers.79.self_attn.k_proj.weight": (1024, 8192),
        "language_model.model.layers.79.self_attn.k_proj.bias": (1024,),
        "language_model.lm_head.weight": (152064, 8192),
    }.items():
        assert shapes[key] == shape, key
    assert "vision_model.encoder.layers.45.ls1" not in shapes
    assert [k for k in shapes if k.startswith("mlp1.") and k.endswith("bias")] == ["mlp1.0.bias"]

    def count(prefix):
        return sum(torch.Size(s).numel() for k, s in shapes.items() if k.startswith(prefix))

    # the model's 5,536,496,000 ViT parameters + 45 x 11,470,592 stored zeros
    assert count("vision_model.") == 5_536_496_000 + 45 * 11_470_592
    assert count("mlp1.") == 620_717_056
    assert count("language_model.") == 72_706_203_648
    assert count("") == 79_379_593_344


def test_select_layer_uses_that_layers_hidden_states():
    model = build_tiny_model(seed=3)
    model.select_layer = -2
    pv = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        feats = model.extract_feature(pv)
        hidden = model.vision_model(pixel_values=pv, output_hidden_states=True).hidden_states[-2][:, 1:]
        ref = model.mlp1(pixel_shuffle(hidden.reshape(1, 4, 4, -1), 0.5).reshape(1, 4, -1))
    torch.testing.assert_close(feats, ref, atol=0, rtol=0)


def test_72b_tokens_per_tile():
    from nvlm_train.hf.configuration_nvlm_d import NVLM_D_Config
    from nvlm_train.hf.modeling_nvlm_d import NVLM_D_Model

    cfg = released_72b_hf_config()
    with torch.device("meta"):
        model = NVLM_D_Model(NVLM_D_Config(**{k: v for k, v in cfg.items() if k != "auto_map"}))
    assert model.num_image_token == 256
    assert model.mlp1[0].eps == 1e-5 and model.vision_model.encoder.layers[0].norm1.variance_epsilon == 1e-6
