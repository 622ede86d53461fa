"""The model card's inference snippet, as written, against a tiny export made by mcore-to-hf.

Differences from the card, all forced by the test setting: the path, ``max_new_tokens`` (a tiny random
model rarely emits <|im_end|>), the 112 px tiles of the tiny model, and no multi-GPU ``device_map``.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from nvlm_train.convert.export import ExportOptions, export_checkpoint


@pytest.fixture(scope="module")
def export_dir(ckpt_tp1, tmp_path_factory):
    out = tmp_path_factory.mktemp("card") / "NVLM-D-tiny"
    export_checkpoint(ExportOptions(ckpt_tp1, out, dtype="bf16", progress=False))
    return out


def test_model_card_snippet(export_dir, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    from nvlm_train.vision.tiling import load_image  # the card's load_image semantics (tiling + thumbnail)

    path = str(export_dir)
    model = AutoModel.from_pretrained(
        path,
        torch_dtype=torch.bfloat16,
        low_cpu_mem_usage=True,
        use_flash_attn=False,
        trust_remote_code=True).eval()
    print(model)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True, use_fast=False)
    generation_config = dict(max_new_tokens=24, do_sample=False)

    # pure-text conversation (and a second turn with its history)
    question = 'Hello, who are you?'
    response, history = model.chat(tokenizer, None, question, generation_config, history=None, return_history=True)
    print(f'User: {question}\nAssistant: {response}')
    assert isinstance(response, str) and history == [(question, response)]
    question2 = 'Can you tell me a story?'
    response2, history = model.chat(tokenizer, None, question2, generation_config, history=history,
                                    return_history=True)
    assert history == [(question, response), (question2, response2)]

    # single-image single-round conversation
    image_file = tmp_path / "example.jpg"
    Image.new("RGB", (300, 120), (30, 120, 200)).save(image_file)
    pixel_values = load_image(image_file, input_size=112, max_num=6).to(torch.bfloat16)
    assert pixel_values.shape[0] > 1  # a grid + the thumbnail
    question = '<image>\nPlease describe the image shortly.'
    response = model.chat(tokenizer, pixel_values, question, generation_config)
    print(f'User: {question}\nAssistant: {response}')
    assert isinstance(response, str)
    assert model.language_model.dtype == torch.bfloat16
