"""The tiny export directory behaves like nvidia/NVLM-D-72B under the model card's inference snippet."""

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from nvlm_train.convert.hf_files import copy_modeling_files
from nvlm_train.hf import MODELING_FILES
from tests.fixtures.hf_builders import card_load_image, released_72b_hf_config


def _load_card(path, dtype=torch.bfloat16, auto_class=AutoModel):
    return auto_class.from_pretrained(
        str(path), torch_dtype=dtype, low_cpu_mem_usage=True, use_flash_attn=False, trust_remote_code=True
    ).eval()


def _saved_state(path):
    index = json.loads((path / "model.safetensors.index.json").read_text())
    state = {}
    for shard in sorted(set(index["weight_map"].values())):
        state.update(load_file(str(path / shard)))
    assert set(state) == set(index["weight_map"])
    return state


@pytest.fixture(scope="module")
def card_model(tiny_export_dir):
    return _load_card(tiny_export_dir)


@pytest.fixture(scope="module")
def tokenizer(tiny_export_dir):
    return AutoTokenizer.from_pretrained(str(tiny_export_dir), trust_remote_code=True, use_fast=False)


def test_directory_layout_and_config(tiny_export_dir):
    for name in (*MODELING_FILES, "config.json", "model.safetensors.index.json", "tokenizer_config.json"):
        assert (tiny_export_dir / name).is_file(), name
    cfg = json.loads((tiny_export_dir / "config.json").read_text())
    assert cfg["architectures"] == ["NVLM_D"] and cfg["model_type"] == "NVLM_D"
    assert cfg["auto_map"] == {
        "AutoConfig": "configuration_nvlm_d.NVLM_D_Config",
        "AutoModel": "modeling_nvlm_d.NVLM_D_Model",
        "AutoModelForCausalLM": "modeling_nvlm_d.NVLM_D_Model",
    }
    assert cfg["llm_config"]["architectures"] == ["Qwen2ForCausalLM"]
    assert (cfg["ps_version"], cfg["select_layer"], cfg["downsample_ratio"]) == ("v2", -1, 0.5)
    assert cfg["use_thumbnail"] and cfg["dynamic_image_size"]
    assert len(json.loads((tiny_export_dir / "model.safetensors.index.json").read_text())["weight_map"]) > 0
    assert len(list(tiny_export_dir.glob("model-*-of-*.safetensors"))) > 1  # sharded


def test_72b_config_loads_with_autoconfig(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(released_72b_hf_config()))
    copy_modeling_files(tmp_path)
    cfg = AutoConfig.from_pretrained(str(tmp_path), trust_remote_code=True)
    assert type(cfg).__name__ == "NVLM_D_Config"
    assert cfg.vision_config.num_hidden_layers == 45 and cfg.vision_config.num_attention_heads == 25
    assert cfg.llm_config.num_key_value_heads == 8 and cfg.llm_config.intermediate_size == 29568
    # transformers 5.x: rope_parameters; 4.x: rope_theta
    rope = getattr(cfg.llm_config, "rope_parameters", None) or {"rope_theta": cfg.llm_config.rope_theta}
    assert rope["rope_theta"] == 1e6
    assert (cfg.max_dynamic_patch, cfg.force_image_size, cfg.image_tag_type) == (6, 448, "nvlm")
    bare = type(cfg)()  # composite config must work with no arguments
    assert bare.vision_config.hidden_size == 3200 and bare.llm_config.hidden_size == 8192
    json.dumps(bare.to_dict())


def test_fp32_load_restores_every_weight(tiny_export_dir):
    model, info = AutoModel.from_pretrained(
        str(tiny_export_dir), torch_dtype=torch.float32, trust_remote_code=True, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    loaded = model.state_dict()
    saved = _saved_state(tiny_export_dir)
    assert set(loaded) == set(saved)
    for key, tensor in saved.items():
        assert torch.equal(loaded[key], tensor), key


def test_card_load_is_bf16(card_model):
    assert card_model.language_model.dtype == torch.bfloat16
    assert card_model.vision_model.embeddings.patch_embedding.weight.dtype == torch.bfloat16
    assert card_model.mlp1[1].weight.dtype == torch.bfloat16


def test_tokenizer_special_tokens(tokenizer):
    text = "<|im_start|>user\n<Image><tile_1><|vision_pad|></Image><|im_end|>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids.count(tokenizer.convert_tokens_to_ids("<|vision_pad|>")) == 1
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    tags = tokenizer("<tile_global_thumbnail>", add_special_tokens=False)["input_ids"]
    assert len(tags) > 1  # tile tags are plain text


def test_card_inference_flow(card_model, tokenizer, tmp_path):
    model = card_model
    generation_config = dict(max_new_tokens=6, do_sample=False)

    # pure-text conversation, with history
    question = "Hello, who are you?"
    response, history = model.chat(
        tokenizer, None, question, generation_config, history=None, return_history=True
    )
    assert isinstance(response, str) and response == response.strip()
    assert history == [(question, response)]
    response2, history2 = model.chat(
        tokenizer, None, "And then?", generation_config, history=history, return_history=True
    )
    assert history2 == [(question, response), ("And then?", response2)]
    assert history == [(question, response)]  # caller's list untouched

    # single-image single-round conversation, image loaded from a file like the card's load_image
    path = tmp_path / "example.png"
    Image.new("RGB", (150, 60), (200, 30, 30)).save(path)
    pixel_values = card_load_image(Image.open(path), input_size=56, max_num=6).to(torch.bfloat16)
    assert pixel_values.shape == (4, 3, 56, 56)  # aspect 2.5: 2x1 / 3x1 tie, larger wins; + thumbnail
    question = "<image>\nPlease describe the image shortly."
    response = model.chat(tokenizer, pixel_values, question, generation_config)
    assert isinstance(response, str)
    # question without <image>: chat() puts "<image>\n" in front
    response, hist = model.chat(tokenizer, pixel_values, "Describe.", generation_config, return_history=True)
    assert hist[0][0] == "<image>\nDescribe."


def test_chat_prompt_and_greedy_tokens_match_forward(tiny_export_dir, tokenizer):
    """chat() builds the exact NVLM-D prompt, and generate() decodes greedily what forward() predicts."""
    model = _load_card(tiny_export_dir, dtype=torch.float32)
    pixel_values = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    captured = {}
    original_generate = model.generate

    def spy(**kwargs):
        captured.update(kwargs)
        return original_generate(**kwargs)

    model.generate = spy
    history = [("Hi", "Hello!")]
    # With a history, the released chat() does not add <image>: the question must carry it.
    response, _ = model.chat(
        tokenizer, pixel_values, "<image>\nWhat is it?", dict(max_new_tokens=5, do_sample=False),
        history=history, return_history=True,
    )
    pad = "<|vision_pad|>" * 4
    expected = (  # the released chat(): system turn, no newline after <|im_end|>
        "<|im_start|>system\nAnswer the questions.<|im_end|>"
        "<|im_start|>user\nHi<|im_end|><|im_start|>assistant\nHello!<|im_end|>"
        f"<|im_start|>user\n<Image><tile_1>{pad}<tile_global_thumbnail>{pad}</Image>\nWhat is it?<|im_end|>"
        "<|im_start|>assistant\n"
    )
    input_ids = captured["input_ids"]
    assert tokenizer.decode(input_ids[0]) == expected
    model.chat_without_sys_prompt(tokenizer, pixel_values, "<image>\nWhat is it?", dict(max_new_tokens=1),
                                  history=history)
    assert tokenizer.decode(captured["input_ids"][0]) == expected[len("<|im_start|>system\nAnswer the questions."
                                                                      "<|im_end|>"):]
    assert model.system_message == "Answer the questions."
    assert captured["eos_token_id"] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert model.img_context_token_id == tokenizer.convert_tokens_to_ids("<|vision_pad|>")

    # greedy reference through forward() (of the chat() call)
    ids = input_ids
    new = []
    with torch.no_grad():
        for _ in range(5):
            logits = model(pixel_values=pixel_values, input_ids=ids).logits
            nxt = int(logits[0, -1].argmax())
            new.append(nxt)
            if nxt == captured["eos_token_id"]:
                break
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    expected_response = tokenizer.decode(new, skip_special_tokens=True).split("<|im_end|>")[0].strip()
    assert response == expected_response


def test_save_pretrained_roundtrip(tiny_export_dir, tmp_path):
    model = _load_card(tiny_export_dir, dtype=torch.float32)
    model.save_pretrained(str(tmp_path))
    copy_modeling_files(tmp_path)
    again = _load_card(tmp_path, dtype=torch.float32, auto_class=AutoModelForCausalLM)
    assert type(again).__name__ == "NVLM_D_Model"
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
