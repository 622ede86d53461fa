"""Training/inference consistency: the data pipeline's prompt layout and tiling equal what HF chat() uses.

Skipped where the data modules are not present.
"""

import pytest
import torch
from PIL import Image
from transformers import AutoModel, AutoTokenizer

from nvlm_train.hf.conversation import build_chat_prompt, expand_image_placeholders
from tests.fixtures.hf_builders import build_tiny_export, card_load_image


def test_prompt_layout_matches_data_pipeline():
    prompt = pytest.importorskip("nvlm_train.data.prompt")
    history = [("Hi", "Hello!"), ("<image>\nAnd this?", "A square.")]
    question = "<image>\nWhat is it?"
    ours = expand_image_placeholders(build_chat_prompt(question, history), [3, 1], num_image_token=2)
    messages = []
    for q, a in history:
        messages += [("user", q), ("assistant", a)]
    messages.append(("user", question))
    theirs = prompt.format_chatml(messages, [3, 1], tokens_per_tile=2, add_generation_prompt=True)
    assert ours == theirs


@pytest.mark.parametrize("size", [(150, 60), (60, 150), (100, 100), (301, 97)])
def test_tiling_matches_data_pipeline(size):
    tiling = pytest.importorskip("nvlm_train.vision.tiling")
    gen = torch.Generator().manual_seed(size[0])
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=gen, dtype=torch.uint8)
    image = Image.fromarray(pixels.numpy())
    ours = card_load_image(image, input_size=56, max_num=6)
    theirs = tiling.load_image(image, input_size=56, max_num=6)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_card_flow_with_demo_tokenizer_and_pipeline_loader(tmp_path):
    tok_mod = pytest.importorskip("nvlm_train.data.tokenizer")
    tiling = pytest.importorskip("nvlm_train.vision.tiling")
    tok_dir = tok_mod.build_demo_tokenizer(tmp_path / "tok")
    export = build_tiny_export(tmp_path / "export", seed=3, tokenizer_dir=tok_dir)
    model = AutoModel.from_pretrained(
        str(export), torch_dtype=torch.bfloat16, low_cpu_mem_usage=True, use_flash_attn=False,
        trust_remote_code=True,
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(export), trust_remote_code=True, use_fast=False)
    generation_config = dict(max_new_tokens=4, do_sample=False)
    response, history = model.chat(
        tokenizer, None, "Hello, who are you?", generation_config, history=None, return_history=True
    )
    assert history == [("Hello, who are you?", response)]
    path = tmp_path / "example.png"
    Image.new("RGB", (120, 90), (10, 200, 30)).save(path)
    pixel_values = tiling.load_image(str(path), input_size=56, max_num=6).to(torch.bfloat16)
    question = "<image>\nPlease describe the image shortly."
    response = model.chat(tokenizer, pixel_values, question, generation_config)
    assert isinstance(response, str)
