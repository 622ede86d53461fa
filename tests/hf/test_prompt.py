import pytest

from nvlm_train.hf.conversation import (
    build_chat_prompt,
    expand_image_placeholders,
    image_token_string,
    tile_tags,
)

P = "<|vision_pad|>"


def test_tile_tags():
    assert tile_tags(1) == ["<tile_global_thumbnail>"]
    assert tile_tags(2) == ["<tile_1>", "<tile_global_thumbnail>"]
    assert tile_tags(7) == [f"<tile_{i}>" for i in range(1, 7)] + ["<tile_global_thumbnail>"]
    with pytest.raises(ValueError):
        tile_tags(0)


def test_image_strings_exact():
    assert image_token_string(1, 3) == f"<Image><tile_global_thumbnail>{P}{P}{P}</Image>"
    assert image_token_string(2, 2) == f"<Image><tile_1>{P}{P}<tile_global_thumbnail>{P}{P}</Image>"
    seven = image_token_string(7, 1)
    assert seven == (
        f"<Image><tile_1>{P}<tile_2>{P}<tile_3>{P}<tile_4>{P}<tile_5>{P}<tile_6>{P}"
        f"<tile_global_thumbnail>{P}</Image>"
    )
    assert image_token_string(2, 2, image_tag_type="internvl") == f"<img>{P * 4}</img>"


def test_chat_prompt_exact_with_image_and_history():
    prompt = build_chat_prompt("<image>\nWhat is it?", history=[("Hi", "Hello!")])
    assert prompt == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n<|im_start|>assistant\n"
    )
    expanded = expand_image_placeholders(prompt, [2], num_image_token=1)
    assert expanded == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
        f"<|im_start|>user\n<Image><tile_1>{P}<tile_global_thumbnail>{P}</Image>\nWhat is it?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_system_message_only_when_configured():
    assert build_chat_prompt("q").startswith("<|im_start|>user\n")
    assert build_chat_prompt("q", system_message="Be brief.") == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"
    )


def test_multi_image_placeholders_in_order():
    out = expand_image_placeholders("A <image> B <image> C", [1, 2], num_image_token=1)
    assert out == (
        f"A <Image><tile_global_thumbnail>{P}</Image> B "
        f"<Image><tile_1>{P}<tile_global_thumbnail>{P}</Image> C"
    )
    with pytest.raises(ValueError, match=r"2 <image> placeholder\(s\) but num_patches_list has 1"):
        expand_image_placeholders("<image><image>", [1], num_image_token=1)
