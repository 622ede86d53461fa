import shutil

from transformers import AutoTokenizer

from nvlm_train.data.prompt import SPECIAL_TOKENS, format_chatml
from nvlm_train.data.synth import COLOURS, SHAPES
from nvlm_train.data.tokenizer import DEMO_VERSION, TextTokenizer, build_demo_tokenizer

TEXT = format_chatml([("user", "<image>\nWhat colour is the shape? Answer with one word."), ("assistant", "red")],
                     [2], 3, system="You are a helpful assistant.")


def test_special_tokens_are_single_ids(tok):
    assert [tok.encode(t) for t in SPECIAL_TOKENS] == [[0], [1], [2], [3]]
    assert (tok.eod_id, tok.im_start_id, tok.im_end_id, tok.image_context_id) == (0, 1, 2, 3)
    assert 500 <= tok.vocab_size <= 1100


def test_synth_answers_are_one_token(tok):
    for word in list(COLOURS) + list(SHAPES) + ["first", "second", "colour", "shape"]:
        assert len(tok.encode(word)) == 1, word


def test_roundtrip_and_image_tokens(tok):
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT
    assert ids.count(tok.image_context_id) == 2 * 3


def test_build_is_cached_and_deterministic(tok_dir, tmp_path):
    before = (tok_dir / "tokenizer.json").stat().st_mtime_ns
    assert build_demo_tokenizer(tok_dir) == tok_dir
    assert (tok_dir / "tokenizer.json").stat().st_mtime_ns == before
    other = build_demo_tokenizer(tmp_path / "again")
    assert (other / "tokenizer.json").read_bytes() == (tok_dir / "tokenizer.json").read_bytes()
    assert DEMO_VERSION in (other / "tokenizer_config.json").read_text()


def test_autotokenizer_fast_and_slow_agree(tok_dir, tok, tmp_path):
    ref = tok.encode(TEXT)
    # The slow route must also work from vocab.json + merges.txt alone.
    slow_only = tmp_path / "slow"
    shutil.copytree(tok_dir, slow_only)
    (slow_only / "tokenizer.json").unlink()
    for path, fast in ((tok_dir, True), (tok_dir, False), (slow_only, False)):
        hf = AutoTokenizer.from_pretrained(path, trust_remote_code=True, use_fast=fast)
        assert hf(TEXT, add_special_tokens=False)["input_ids"] == ref, (path, fast)
        assert hf.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == [0, 1, 2, 3]
        assert hf.eos_token == "<|im_end|>" and hf.pad_token == "<|endoftext|>"
        assert hf.decode(ref) == TEXT


def test_missing_tokenizer_json_error_is_actionable(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        TextTokenizer(tmp_path)
