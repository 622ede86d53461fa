import pytest

from nvlm_train.data.prompt import (
    build_segments,
    expand_image_placeholders,
    format_chatml,
    get_prompt_format,
    image_block,
    resolve_system,
    saved_prompt,
)

P = "<|vision_pad|>"


def test_one_tile_is_the_global_thumbnail():
    assert image_block(1, 3) == f"<Image><tile_global_thumbnail>{P * 3}</Image>"


def test_two_tiles():
    assert image_block(2, 2) == f"<Image><tile_1>{P * 2}<tile_global_thumbnail>{P * 2}</Image>"


def test_seven_tiles():
    expected = ("<Image>" + "".join(f"<tile_{i}>{P}" for i in range(1, 7))
                + f"<tile_global_thumbnail>{P}</Image>")
    assert image_block(7, 1) == expected
    assert image_block(7, 256).count(P) == 7 * 256


def test_two_images_in_order():
    text = "A: <image>\nB: <image>\nSame?"
    assert expand_image_placeholders(text, [1, 2], 1) == (
        f"A: <Image><tile_global_thumbnail>{P}</Image>\n"
        f"B: <Image><tile_1>{P}<tile_global_thumbnail>{P}</Image>\nSame?"
    )


def test_placeholder_count_mismatch_raises():
    with pytest.raises(ValueError, match="2 <image> placeholders but 1 images"):
        expand_image_placeholders("<image><image>", [1], 4)


SYS = "<|im_start|>system\nAnswer the questions.<|im_end|>"


@pytest.mark.parametrize("fmt,nl", [("nvlm_d", ""), ("megatron", "\n")])
def test_one_image_in_each_preset(fmt, nl):
    """nvlm_d = the released chat(): no newline after <|im_end|>; megatron: a newline after each."""
    s = format_chatml([("user", "<image>\nWhat colour?"), ("assistant", "red")], [2], 1,
                      system="Answer the questions.", fmt=fmt)
    assert s == (f"{SYS}{nl}<|im_start|>user\n<Image><tile_1>{P}<tile_global_thumbnail>{P}</Image>\nWhat colour?"
                 f"<|im_end|>{nl}<|im_start|>assistant\nred<|im_end|>{nl}")


def test_released_single_image_question_exactly():
    """The released chat()'s one-image question, with <image> expanded (1 tile of 2 tokens)."""
    s = format_chatml([("user", "<image>\nQUESTION")], [1], 2, system="Answer the questions.",
                      add_generation_prompt=True, fmt="nvlm_d")
    assert s == (f"<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n"
                 f"<Image><tile_global_thumbnail>{P}{P}</Image>\nQUESTION<|im_end|><|im_start|>assistant\n")


@pytest.mark.parametrize("fmt,nl", [("nvlm_d", ""), ("megatron", "\n")])
def test_several_images_placeholders_added_in_front(fmt, nl):
    s = format_chatml([("user", "Same shape?"), ("assistant", "no")], [1, 2], 1, system="Answer the questions.",
                      fmt=fmt)
    assert s == (f"{SYS}{nl}<|im_start|>user\n<Image><tile_global_thumbnail>{P}</Image>\n"
                 f"<Image><tile_1>{P}<tile_global_thumbnail>{P}</Image>\nSame shape?<|im_end|>{nl}"
                 f"<|im_start|>assistant\nno<|im_end|>{nl}")


@pytest.mark.parametrize("fmt,nl", [("nvlm_d", ""), ("megatron", "\n")])
def test_text_only_multi_turn_without_system(fmt, nl):
    s = format_chatml([("user", "1+1?"), ("assistant", "2"), ("user", "2+2?"), ("assistant", "4")], fmt=fmt)
    assert s == (f"<|im_start|>user\n1+1?<|im_end|>{nl}<|im_start|>assistant\n2<|im_end|>{nl}"
                 f"<|im_start|>user\n2+2?<|im_end|>{nl}<|im_start|>assistant\n4<|im_end|>{nl}")


@pytest.mark.parametrize("fmt,nl", [("nvlm_d", ""), ("megatron", "\n")])
def test_history_then_generation_prompt_with_own_system(fmt, nl):
    s = format_chatml([("user", "Hi"), ("assistant", "Hello!"), ("user", "<image>\nAnd this?")], [1], 1,
                      system="Be brief.", add_generation_prompt=True, fmt=fmt)
    assert s == (f"<|im_start|>system\nBe brief.<|im_end|>{nl}<|im_start|>user\nHi<|im_end|>{nl}"
                 f"<|im_start|>assistant\nHello!<|im_end|>{nl}"
                 f"<|im_start|>user\n<Image><tile_global_thumbnail>{P}</Image>\nAnd this?<|im_end|>{nl}"
                 f"<|im_start|>assistant\n")


@pytest.mark.parametrize("fmt,nl", [("nvlm_d", ""), ("megatron", "\n")])
def test_targets_are_exactly_replies_and_their_im_end(fmt, nl):
    segs = build_segments([("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2")], [], 4,
                          system="S", fmt=fmt)
    assert [s.text for s in segs if s.target] == ["a1<|im_end|>", "a2<|im_end|>"]
    assert "".join(s.text for s in segs if not s.target) == (
        f"<|im_start|>system\nS<|im_end|>{nl}<|im_start|>user\nq1<|im_end|>{nl}<|im_start|>assistant\n{nl}"
        f"<|im_start|>user\nq2<|im_end|>{nl}<|im_start|>assistant\n{nl}")


def test_system_prompt_setting():
    fmt = get_prompt_format("nvlm_d")
    assert resolve_system(fmt, "preset") == "Answer the questions."
    assert resolve_system(fmt, None) is None
    assert resolve_system(fmt, "Be brief.") == "Be brief."
    assert saved_prompt({"prompt_format": "megatron", "system_prompt": None}) == ("megatron", None)
    assert saved_prompt({"prompt_format": "nvlm_d", "system_prompt": "preset"}) == ("nvlm_d", "Answer the questions.")
    # checkpoints from before presets: newline turns, no system turn
    assert saved_prompt({"max_tiles": 6}) == ("megatron", None)
    with pytest.raises(ValueError, match="unknown prompt format 'chatml2'"):
        get_prompt_format("chatml2")


def test_placeholder_in_assistant_turn_rejected():
    with pytest.raises(ValueError, match="only allowed in user"):
        format_chatml([("user", "x"), ("assistant", "<image>")], [1], 1)
