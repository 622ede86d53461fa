import pytest

from nvlm_train.data.prompt import expand_image_placeholders, format_chatml, image_block

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


def test_chatml_single_turn_with_image():
    s = format_chatml([("user", "<image>\nWhat colour?"), ("assistant", "red")], [2], 1)
    assert s == (f"<|im_start|>user\n<Image><tile_1>{P}<tile_global_thumbnail>{P}</Image>\nWhat colour?"
                 "<|im_end|>\n<|im_start|>assistant\nred<|im_end|>\n")


def test_chatml_prepends_placeholder_and_system_and_generation_prompt():
    s = format_chatml([("user", "Hi")], [1], 2, system="Be brief.", add_generation_prompt=True)
    assert s == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                 f"<|im_start|>user\n<Image><tile_global_thumbnail>{P * 2}</Image>\nHi<|im_end|>\n"
                 "<|im_start|>assistant\n")


def test_chatml_text_only_multi_turn():
    s = format_chatml([("user", "1+1?"), ("assistant", "2"), ("user", "2+2?"), ("assistant", "4")])
    assert s == ("<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n2<|im_end|>\n"
                 "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n")


def test_placeholder_in_assistant_turn_rejected():
    with pytest.raises(ValueError, match="only allowed in user"):
        format_chatml([("user", "x"), ("assistant", "<image>")], [1], 1)
