import io

import numpy as np
import pytest
import torch
from PIL import Image

from nvlm_train.data.encode import EncodeOptions, encode_conversation, tile_budgets
from nvlm_train.data.errors import SampleError
from nvlm_train.data.prompt import format_chatml
from nvlm_train.data.samples import Conversation
from tests.data.card_reference import card_load_image
from tests.data.helpers import png

OPTS = EncodeOptions(seq_length=4096, tokens_per_tile=4, image_size=28, max_tiles=12)


def test_loss_mask_covers_exactly_the_assistant_replies(tok):
    conv = Conversation([("user", "<image>\nWhat colour is the shape?"), ("assistant", "red"),
                         ("user", "And the shape?"), ("assistant", "a big circle")], [png(60, 30)],
                        system="You are a helpful assistant.")
    s = encode_conversation(conv, tok, OPTS)
    text = format_chatml(conv.messages, s.tiles_per_image, 4, system=conv.system)
    assert s.tokens.tolist() == tok.encode(text)  # segment-wise tokenisation == whole-string tokenisation
    assert tok.decode(s.tokens[s.targets].tolist()) == "red<|im_end|>a big circle<|im_end|>"
    assert not s.targets[s.tokens == tok.image_context_id].any()
    assert s.tiles_per_image == (3,)  # 2x1 grid + thumbnail
    assert s.pixel_values.shape == (3, 3, 28, 28)
    assert int((s.tokens == tok.image_context_id).sum()) == 3 * 4
    # uint8 in the batch; what the model computes from it is exactly the card's load_image output.
    from nvlm_train.vision.tiling import normalize_pixels

    card = card_load_image(Image.open(io.BytesIO(conv.images[0])), input_size=28, max_num=12)
    assert s.pixel_values.dtype == torch.uint8 and torch.equal(normalize_pixels(s.pixel_values), card)


@pytest.mark.parametrize("fmt,nl", [("nvlm_d", ""), ("megatron", "\n")])
def test_presets_token_by_token(tok, fmt, nl):
    """The run's system text is used when the sample has none; the loss is on each reply and its <|im_end|>
    only, in either preset (written out by hand)."""
    opts = EncodeOptions(seq_length=4096, tokens_per_tile=4, image_size=28, max_tiles=12, prompt_format=fmt,
                         system="Answer the questions.")
    conv = Conversation([("user", "Hi"), ("assistant", "yo"), ("user", "Bye"), ("assistant", "ciao")])
    s = encode_conversation(conv, tok, opts)
    assert tok.decode(s.tokens.tolist()) == (
        f"<|im_start|>system\nAnswer the questions.<|im_end|>{nl}<|im_start|>user\nHi<|im_end|>{nl}"
        f"<|im_start|>assistant\nyo<|im_end|>{nl}<|im_start|>user\nBye<|im_end|>{nl}"
        f"<|im_start|>assistant\nciao<|im_end|>{nl}")
    flags = s.targets.tolist()
    runs = [tok.decode(s.tokens[[i for i, f in enumerate(flags) if f]].tolist())]
    assert runs == ["yo<|im_end|>ciao<|im_end|>"]
    # each target run is contiguous and ends on an <|im_end|>
    ends = [i for i in range(len(flags)) if flags[i] and (i + 1 == len(flags) or not flags[i + 1])]
    assert [int(s.tokens[i]) for i in ends] == [tok.im_end_id] * 2
    own = encode_conversation(Conversation(conv.messages, system="Be brief."), tok, opts)
    assert tok.decode(own.tokens.tolist()).startswith(f"<|im_start|>system\nBe brief.<|im_end|>{nl}<|im_start|>user")


def test_text_only(tok):
    s = encode_conversation(Conversation([("user", "1+1?"), ("assistant", "2")]), tok, OPTS)
    assert s.pixel_values.shape == (0, 3, 28, 28)
    assert tok.decode(s.tokens[s.targets].tolist()) == "2<|im_end|>"


def test_tile_ladder():
    assert tile_budgets(12) == [12, 8, 6, 4, 2, 1]
    assert tile_budgets(6) == [6, 4, 2, 1]
    assert tile_budgets(1) == [1]


def _length(tok, tiles):
    conv_msgs = [("user", "<image>\nWhat?"), ("assistant", "red")]
    return len(tok.encode(format_chatml(conv_msgs, tiles, 4)))


def test_budget_reduces_tiles_until_it_fits(tok):
    # A 1200x100 image wants a 12x1 grid (13 tiles); with room for ~5 tiles the ladder lands on 4 (+thumbnail).
    conv = Conversation([("user", "<image>\nWhat?"), ("assistant", "red")], [png(1200, 100)])
    full = _length(tok, [13])
    s = encode_conversation(conv, tok, EncodeOptions(seq_length=full, tokens_per_tile=4, image_size=28, max_tiles=12))
    assert s.tiles_per_image == (13,)
    limit = _length(tok, [5]) + 2
    s = encode_conversation(conv, tok, EncodeOptions(seq_length=limit, tokens_per_tile=4, image_size=28, max_tiles=12))
    assert s.tiles_per_image == (5,)  # budgets 12 -> 8 -> 6 do not fit; 4 gives 4 tiles + thumbnail
    assert s.pixel_values.shape[0] == 5 and len(s) <= limit
    with pytest.raises(SampleError) as e:
        encode_conversation(conv, tok, EncodeOptions(seq_length=_length(tok, [1]) - 1, tokens_per_tile=4,
                                                     image_size=28, max_tiles=12))
    assert e.value.reason == "too_long"


def test_budget_is_split_between_images(tok):
    conv = Conversation([("user", "<image><image>\nSame?"), ("assistant", "no")], [png(1200, 100), png(100, 1200)])
    s = encode_conversation(conv, tok, EncodeOptions(seq_length=4096, tokens_per_tile=4, image_size=28, max_tiles=8))
    assert s.tiles_per_image == (5, 5)  # 8 // 2 = 4 per image -> 4x1 and 1x4 grids + thumbnails
    assert s.pixel_values.shape[0] == 10


def test_text_that_contains_special_tokens_is_rejected(tok):
    for text in ("look <|vision_pad|> here", "x<|im_end|>"):
        with pytest.raises(SampleError) as e:
            encode_conversation(Conversation([("user", text), ("assistant", "ok")]), tok, OPTS)
        assert e.value.reason == "special_token_in_text"


def test_too_long_text_only_is_dropped(tok):
    with pytest.raises(SampleError) as e:
        encode_conversation(Conversation([("user", "word " * 200), ("assistant", "ok")]), tok,
                            EncodeOptions(seq_length=50, tokens_per_tile=4, image_size=28, max_tiles=12))
    assert e.value.reason == "too_long"


def test_targets_are_bool_and_tokens_int64(tok):
    s = encode_conversation(Conversation([("user", "hi"), ("assistant", "yo")]), tok, OPTS)
    assert s.tokens.dtype == np.int64 and s.targets.dtype == bool


def test_encode_prompt_for_evaluation(tok):
    from PIL import Image

    from nvlm_train.data.encode import encode_prompt
    from nvlm_train.vision.tiling import load_image, normalize_pixels

    img = Image.new("P", (90, 30))
    tokens, pv = encode_prompt([("user", "What colour?")], [img], tok, tokens_per_tile=4, image_size=28, max_tiles=6)
    text = format_chatml([("user", "What colour?")], [4], 4, add_generation_prompt=True)
    assert text.startswith("<|im_start|>user\n<Image><tile_1>") and text.endswith("<|im_start|>assistant\n")
    assert tokens.tolist() == tok.encode(text)
    assert pv.shape == (4, 3, 28, 28) and pv.dtype == torch.uint8
    assert torch.equal(normalize_pixels(pv), load_image(img, 28, 6))
