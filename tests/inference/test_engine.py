"""The generation engine at TP1: KV cache = no cache = one prompt at a time, token for token, on a batch
mixing text-only, one-tile, multi-tile and two-image prompts of different lengths; seeded sampling is
reproducible and independent of batching; stops; bad requests; and an independent reference: greedy
tokens equal transformers' ``generate`` on the HF export of the same weights."""

from __future__ import annotations

import pytest
import torch

from nvlm_train.inference.engine import GenerationEngine, GenerationRequest, SamplingConfig
from nvlm_train.runtime.session import distributed_session
from tests.inference.workers import mixed_requests


@pytest.fixture(scope="module")
def engine(tiny_ckpt):
    with distributed_session():
        yield GenerationEngine.from_checkpoint(tiny_ckpt, batch_size=8)


def _tokens(results):
    return {r.id: (r.tokens, r.finish_reason) for r in results}


def test_kv_cache_equals_no_cache_and_unbatched(engine):
    greedy = SamplingConfig(max_new_tokens=10)
    cached = engine.generate(mixed_requests(), greedy)
    assert [r.id for r in cached] == [r.id for r in mixed_requests()]  # input order kept
    assert all(len(r.tokens) > 0 and not r.finish_reason.startswith("error") for r in cached)
    no_cache = engine.generate(mixed_requests(), greedy, use_cache=False)
    engine.batch_size = 1
    try:
        alone = engine.generate(mixed_requests(), greedy)
    finally:
        engine.batch_size = 8
    assert _tokens(cached) == _tokens(no_cache) == _tokens(alone)


def test_seeded_sampling_is_reproducible_and_batch_independent(engine):
    sampling = SamplingConfig(max_new_tokens=6, temperature=0.8, top_k=50, top_p=0.9, seed=11)
    a = _tokens(engine.generate(mixed_requests(), sampling))
    b = _tokens(engine.generate(mixed_requests()[::-1], sampling))
    assert a == b
    other = _tokens(engine.generate(mixed_requests(), SamplingConfig(max_new_tokens=6, temperature=0.8, seed=12)))
    assert other != a


def test_stop_ids_strings_and_max_new_tokens(engine):
    req = [mixed_requests()[1]]  # the one-tile prompt: this random model's reply decodes to text early
    free = engine.generate(req, SamplingConfig(max_new_tokens=8))[0]
    assert free.finish_reason == "length" and len(free.tokens) == 8
    stop_id = engine.generate(req, SamplingConfig(max_new_tokens=8, stop_ids=(free.tokens[2],)))[0]
    assert stop_id.finish_reason == "stop" and stop_id.tokens == free.tokens[:2]
    decode = engine.tokenizer.decode
    k = next(k for k in range(2, 9) if decode(free.tokens[:k - 1]).strip())  # first k with text before it
    piece = decode(free.tokens[:k - 1]).strip()[-2:]  # a stop string the (k-1)-th token completes
    assert piece not in decode(free.tokens[:k - 2])
    by_text = engine.generate(req, SamplingConfig(max_new_tokens=8, stop_strings=(piece,)))[0]
    assert by_text.finish_reason == "stop" and by_text.tokens == free.tokens[:k - 1]
    assert piece not in by_text.text and decode(free.tokens[:k - 1]).strip().startswith(by_text.text)


def test_bad_requests_are_reported_not_raised(engine, tmp_path):
    good = mixed_requests()[0]
    reqs = [GenerationRequest("missing", [("user", "<image>\nWhat?")], [str(tmp_path / "nope.png")]), good,
            GenerationRequest("long", [("user", "word " * 5000)]),
            GenerationRequest("count", [("user", "<image>\n<image>\nTwo?")], [str(tmp_path / "nope.png")][:0]),
            GenerationRequest("special", [("user", "look <|im_end|> here")])]
    out = {r.id: r for r in engine.generate(reqs, SamplingConfig(max_new_tokens=3))}
    assert out["missing"].finish_reason == "error:missing_image" and "nope.png" in out["missing"].error
    assert out["long"].finish_reason == "error:too_long"
    assert out["count"].finish_reason == "error:bad_request"
    assert out["special"].finish_reason == "error:special_token_in_text" and "<|im_end|>" in out["special"].error
    assert len(out[good.id].tokens) == 3


def test_greedy_matches_transformers_generate_on_the_export(engine, tiny_hf):
    """Independent reference: our HF modeling code through transformers' generate, same weights."""
    from transformers import AutoModel

    from nvlm_train.vision.tiling import normalize_pixels

    hf = AutoModel.from_pretrained(str(tiny_hf), torch_dtype=torch.float32, trust_remote_code=True,
                                   use_flash_attn=False).eval()
    n = 6
    ours = _tokens(engine.generate(mixed_requests(), SamplingConfig(max_new_tokens=n)))
    tok = engine.tokenizer
    hf.img_context_token_id = tok.image_context_id  # as the card's chat() sets it from the tokenizer
    for req in mixed_requests():
        ids, pixels = engine.encode(req)
        ids = torch.tensor([ids])
        pv = normalize_pixels(pixels) if len(pixels) else None
        with torch.no_grad():
            out = hf.generate(pixel_values=pv, input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                              do_sample=False, eos_token_id=[tok.im_end_id, tok.eod_id], pad_token_id=tok.pad_id)
        theirs = [int(t) for t in out[0]]
        if theirs and theirs[-1] in (tok.im_end_id, tok.eod_id):
            theirs = theirs[:-1]
        assert ours[req.id][0] == theirs, req.id


def test_image_slots_are_checked_on_the_host(engine):
    """Token-level prompts whose image-context tokens do not match the tiles are refused before any copy
    (on a GPU the splice itself no longer counts them: that would be a device sync)."""
    from nvlm_train.inference.decode import DecodeOptions
    from nvlm_train.model.nvlm_d import ImageTokenMismatchError

    cfg = engine.model_cfg
    size = cfg.vision.image_size
    one_tile = torch.zeros(1, 3, size, size, dtype=torch.uint8)
    prompt = [5] + [cfg.language.image_token_id] * (cfg.tokens_per_tile - 1) + [6]  # one slot short
    with pytest.raises(ImageTokenMismatchError, match=rf"{cfg.tokens_per_tile - 1} image-context tokens"):
        engine.generate_ids([prompt], one_tile, DecodeOptions(max_new_tokens=[1]))
