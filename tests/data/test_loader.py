import dataclasses
import json
from collections import Counter

import numpy as np
import pytest
import torch

from nvlm_train.data.loader import DataConfig, build_loader
from nvlm_train.data.order import BlendOrder, block_counts
from nvlm_train.data.prompt import format_chatml
from nvlm_train.data.recipe import parse_recipe


def take(loader, n):
    return [next(loader) for _ in range(n)]


def assert_batches_equal(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k


def check_contract(batch, cfg, tok):
    b, s = cfg.micro_batch_size, cfg.seq_length
    assert batch["tokens"].shape == (b, s) and batch["tokens"].dtype == torch.int64
    assert batch["labels"].shape == (b, s) and batch["position_ids"].shape == (b, s)
    assert batch["loss_mask"].dtype == torch.float32
    n_ctx = int((batch["tokens"] == tok.image_context_id).sum())
    assert n_ctx == batch["pixel_values"].shape[0] * cfg.tokens_per_tile
    assert batch["pixel_values"].shape[1:] == (3, cfg.image_size, cfg.image_size)
    for r in range(b):
        bounds = batch["seq_boundaries"][r].tolist()
        assert bounds[0] == 0 and bounds[-1] == s and bounds == sorted(bounds)
        toks, labels, mask = batch["tokens"][r], batch["labels"][r], batch["loss_mask"][r]
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            if hi == lo:
                continue
            assert batch["position_ids"][r, lo:hi].tolist() == list(range(hi - lo))
            assert torch.equal(labels[lo:hi - 1], toks[lo + 1:hi])
            assert mask[hi - 1] == 0
        assert not mask[labels == tok.image_context_id].any()


def test_batches_follow_the_contract(small_cfg):
    loader = build_loader(small_cfg)
    for batch in take(loader, 4):
        check_contract(batch, small_cfg, loader.tokenizer)
        assert batch["num_samples"].min() >= 1
    assert loader.skipped == {}


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_exact(small_cfg, workers):
    cfg = dataclasses.replace(small_cfg, num_workers=workers)
    reference = take(build_loader(dataclasses.replace(small_cfg, num_workers=0)), 7)
    first = build_loader(cfg)
    head = take(first, 3)
    state = json.loads(json.dumps(first.state_dict()))  # plain data: goes into any checkpoint
    first.close()
    resumed = build_loader(cfg)
    resumed.load_state_dict(state)
    tail = take(resumed, 4)
    resumed.close()
    assert_batches_equal(head + tail, reference)  # and identical to the single-process run


def test_state_from_other_config_is_refused(small_cfg):
    loader = build_loader(small_cfg)
    next(loader)
    state = loader.state_dict()
    other = build_loader(dataclasses.replace(small_cfg, seq_length=200))
    with pytest.raises(ValueError, match="seq_length"):
        other.load_state_dict(state)


def test_seed_changes_order(small_cfg):
    a = next(build_loader(small_cfg))["tokens"]
    b = next(build_loader(dataclasses.replace(small_cfg, seed=2)))["tokens"]
    assert not torch.equal(a, b)


def test_dp_ranks_are_disjoint_and_cover_everything(small_cfg, synth_root):
    cfg = dataclasses.replace(small_cfg, recipe="demo_heldout", single_pass=True, micro_batch_size=1)
    seen, samples = [], 0
    for rank in range(3):
        loader = build_loader(cfg, dp_rank=rank, dp_size=3)
        proc = loader.processor
        keys = [(s.path, s.keys[k]) for s, k in (proc.locate(j)[1:] for j in range(proc.length))]
        seen.append(set(keys))
        samples += sum(int(b["num_samples"].sum()) for b in loader)
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert len(seen[0] | seen[1] | seen[2]) == 20 == samples


def test_blended_ranks_disjoint_within_an_epoch():
    order = BlendOrder([50], [1.0], seed=3)
    ranks = [{order[j * 4 + r][1] for j in range(50 // 4 + 1) if j * 4 + r < 50} for r in range(4)]
    assert sum(len(x) for x in ranks) == 50 and set().union(*ranks) == set(range(50))


def test_blend_weights_are_exact_per_block():
    assert block_counts([0.9, 0.1], 100).tolist() == [90, 10]
    assert block_counts([1, 1, 1], 100).tolist() == [34, 33, 33]
    order = BlendOrder([7, 1000], [0.25, 0.75], seed=0, block=400)
    counts = Counter(order[g][0] for g in range(800))
    assert counts == {0: 200, 1: 600}
    # dataset 0 (7 samples) is traversed as whole permutations: each sample 200/7 times +-1
    per_sample = Counter(order[g][1] for g in range(800) if order[g][0] == 0)
    assert set(per_sample) == set(range(7)) and max(per_sample.values()) - min(per_sample.values()) <= 1


def test_packing_off_gives_one_sample_per_row(small_cfg):
    loader = build_loader(dataclasses.replace(small_cfg, packing=False))
    for batch in take(loader, 3):
        assert batch["num_samples"].tolist() == [1, 1]
        check_contract(batch, small_cfg, loader.tokenizer)


def test_text_only_batches_have_empty_pixel_values(small_cfg, synth_root, tmp_path):
    from tests.data.helpers import conv_json, write_tar

    shard = write_tar(tmp_path / "text.tar", [(f"t{i}", {"json": conv_json(("hi", "yo"))}) for i in range(4)])
    recipe = parse_recipe({"datasets": [{"name": "t", "paths": [shard]}]})
    loader = build_loader(small_cfg, recipe=recipe)
    batch = next(loader)
    assert batch["pixel_values"].shape == (0, 3, 28, 28)
    # the default: the nvlm_d preset with its system message
    text = format_chatml([("user", "hi"), ("assistant", "yo")], system="Answer the questions.")
    n = len(loader.tokenizer.encode(text))
    per_row = small_cfg.seq_length // n  # the 4 samples cycle (next epoch), packed greedily
    assert batch["num_samples"].tolist() == [per_row, per_row]
    assert batch["seq_boundaries"][0].tolist() == [i * n for i in range(per_row + 1)] + [small_cfg.seq_length]


def test_single_pass_ends_and_pads_last_batch(small_cfg):
    cfg = dataclasses.replace(small_cfg, recipe="demo_heldout", single_pass=True, packing=False, micro_batch_size=3)
    batches = list(build_loader(cfg))
    assert [b["num_samples"].tolist() for b in batches][-1] == [1, 1, 0]
    assert sum(int(b["num_samples"].sum()) for b in batches) == 20
    check_contract(batches[-1], cfg, build_loader(cfg).tokenizer)


def test_config_validation():
    with pytest.raises(ValueError, match="seq_length"):
        DataConfig(seq_length=0, max_tiles=6, image_size=28, tokens_per_tile=4)
    with pytest.raises(TypeError, match="image_size"):  # sizes derive from the run and the model: no defaults
        DataConfig(seq_length=64, max_tiles=6, tokens_per_tile=4)
    assert np.isfinite(DataConfig(seq_length=64, max_tiles=6, image_size=28, tokens_per_tile=4).max_image_pixels)


def test_same_dp_rank_sees_the_same_batches(small_cfg):
    """All TP ranks (and pipeline stages) of one DP rank build their loader with the same dp_rank."""
    a, b = build_loader(small_cfg, 1, 2), build_loader(small_cfg, 1, 2)
    assert_batches_equal(take(a, 2), take(b, 2))
    assert not torch.equal(next(build_loader(small_cfg, 0, 2))["tokens"], next(build_loader(small_cfg, 1, 2))["tokens"])


def test_config_max_tiles_caps_the_recipe(small_cfg):
    loader = build_loader(dataclasses.replace(small_cfg, max_tiles=1))
    assert [o.max_tiles for o in loader.processor.encode_opts] == [1, 1]
    for batch in take(loader, 2):
        text = "".join(loader.tokenizer.decode(row.tolist()) for row in batch["tokens"])
        assert text.count("<Image>") == batch["pixel_values"].shape[0] > 0  # one tile per image
        assert "<tile_1>" not in text
    loader = build_loader(dataclasses.replace(small_cfg, max_tiles=12))
    assert [o.max_tiles for o in loader.processor.encode_opts] == [6, 6]  # the demo recipe's own limit


def test_pipe_shards_are_materialised(small_cfg, synth_root):
    shard = sorted((synth_root / "heldout").glob("*.tar"))[0]
    recipe = parse_recipe({"datasets": [{"name": "p", "paths": [f"pipe:cat {shard}"]}]})
    cfg = dataclasses.replace(small_cfg, single_pass=True, packing=False, micro_batch_size=1)
    assert sum(int(b["num_samples"].sum()) for b in build_loader(cfg, recipe=recipe)) == 20


def test_warnings_are_rate_limited(caplog):
    from nvlm_train.data.errors import RateLimitedWarner

    w = RateLimitedWarner(per_reason=2, every_s=1e9)
    with caplog.at_level("WARNING", logger="nvlm_train.data"):
        for i in range(10):
            w.warn("bad_json", "s.tar", f"k{i}")
        w.warn("corrupt_image", "s.tar", "x")
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 3 and "k0 in s.tar: bad_json" in msgs[0] and "corrupt_image" in msgs[2]


def test_package_reexports():
    import nvlm_train.data as data
    from nvlm_train.data import prompt

    assert data.build_loader is build_loader and data.DataConfig is DataConfig
    assert data.format_chatml is prompt.format_chatml
    with pytest.raises(AttributeError):
        data.nope  # noqa: B018
