import pytest

from nvlm_train.hf.conversation import (
    PROMPT_FORMATS,
    build_chat_prompt,
    expand_image_placeholders,
    format_for_config,
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


def test_chat_prompt_released_format_with_image_and_history():
    """The released chat()'s MPT-style chatml prompt (its conversation.py), written out by hand."""
    prompt = build_chat_prompt("<image>\nWhat is it?", history=[("Hi", "Hello!")],
                               system="Answer the questions.")
    assert prompt == (
        "<|im_start|>system\nAnswer the questions.<|im_end|>"
        "<|im_start|>user\nHi<|im_end|><|im_start|>assistant\nHello!<|im_end|>"
        "<|im_start|>user\n<image>\nWhat is it?<|im_end|><|im_start|>assistant\n"
    )
    expanded = expand_image_placeholders(prompt, [2], num_image_token=1)
    assert expanded == (
        "<|im_start|>system\nAnswer the questions.<|im_end|>"
        "<|im_start|>user\nHi<|im_end|><|im_start|>assistant\nHello!<|im_end|>"
        f"<|im_start|>user\n<Image><tile_1>{P}<tile_global_thumbnail>{P}</Image>\nWhat is it?<|im_end|>"
        "<|im_start|>assistant\n"
    )


def test_megatron_format_and_no_system():
    assert build_chat_prompt("q", fmt=PROMPT_FORMATS["megatron"]) == (
        "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"
    )
    assert build_chat_prompt("q", fmt=PROMPT_FORMATS["megatron"], system="Be brief.") == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"
    )


class _Cfg:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def test_config_selects_format_and_system():
    # the released config.json: template chatml, no prompt keys -> the released chat()
    fmt, system = format_for_config(_Cfg(template="chatml"))
    assert (fmt.name, system) == ("nvlm_d", "Answer the questions.")
    # one of our exports from before presets: a system_message, no prompt_format -> newline turns
    fmt, system = format_for_config(_Cfg(template="chatml", prompt_format=None, system_message=""))
    assert (fmt.name, system) == ("megatron", "")
    fmt, system = format_for_config(_Cfg(template="chatml", prompt_format="megatron", system_message=""))
    assert (fmt.name, system) == ("megatron", "")
    assert build_chat_prompt("q", fmt=fmt, system=system) == "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"


def test_multi_image_placeholders_in_order():
    out = expand_image_placeholders("A <image> B <image> C", [1, 2], num_image_token=1)
    assert out == (
        f"A <Image><tile_global_thumbnail>{P}</Image> B "
        f"<Image><tile_1>{P}<tile_global_thumbnail>{P}</Image> C"
    )
    with pytest.raises(ValueError, match=r"2 <image> placeholder\(s\) but num_patches_list has 1"):
        expand_image_placeholders("<image><image>", [1], num_image_token=1)
