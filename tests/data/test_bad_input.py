import dataclasses
import io
import json
import pickle
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nvlm_train.data.loader import build_loader
from nvlm_train.data.recipe import parse_recipe
from nvlm_train.data.stats import shard_stats
from tests.data.helpers import conv_json, png, write_tar

Q = ("<image>\nWhat colour?", "red")


class _Boom:
    """Unpickling this creates a marker file: proof that a shard member was unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _huge_png_header() -> bytes:
    """A tiny PNG whose header claims 30000 x 30000 pixels (a decompression bomb)."""
    data = bytearray(png(2, 2))
    ihdr = 8 + 8  # signature, then length + type of the IHDR chunk
    data[ihdr:ihdr + 8] = struct.pack(">II", 30000, 30000)
    crc = zlib.crc32(bytes(data[ihdr - 4:ihdr + 13]))
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def _encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _mode_images() -> dict[str, bytes]:
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    pal = rgb.convert("P")
    pal.info["transparency"] = 0
    sixteen = Image.fromarray(np.arange(40 * 60, dtype=np.uint16).reshape(40, 60) * 20)
    assert sixteen.mode == "I;16"
    return {
        "cmyk.jpg": _encoded(rgb.convert("CMYK"), "JPEG"),
        "palette.png": _encoded(pal, "PNG"),
        "rgba.png": _encoded(rgb.convert("RGBA"), "PNG"),
        "gray.png": _encoded(rgb.convert("L"), "PNG"),
        "la.png": _encoded(rgb.convert("LA"), "PNG"),
        "sixteen.png": _encoded(sixteen, "PNG"),
        "rgb.webp": _encoded(rgb, "WEBP"),
    }


@pytest.fixture
def bad_shards(tmp_path):
    marker = tmp_path / "UNPICKLED"
    good_png = png(50, 30)
    samples = [
        ("good", {"png": good_png, "json": conv_json(Q)}),
        ("good_text", {"json": conv_json(("hi", "yo"))}),
        ("good_pyd", {"png": good_png, "json": conv_json(Q), "pyd": pickle.dumps(_Boom(str(marker))),
                      "pickle": pickle.dumps(_Boom(str(marker)))}),
        ("bad_json", {"png": good_png, "json": b"{not json"}),
        ("json_list", {"json": b"[1, 2]"}),
        ("not_utf8", {"json": b"\xff\xfe{}"}),
        ("bad_conv", {"json": json.dumps({"conversations": "hello"}).encode()}),
        ("bad_turn", {"json": json.dumps({"conversations": [{"from": "robot", "value": "x"}]}).encode()}),
        ("unexpected", {"png": good_png, "json": b'{"foo": 1}'}),
        ("mismatch", {"png": good_png, "json": conv_json(("<image><image>\nSame?", "no"))}),
        ("missing_img", {"json": conv_json(Q)}),
        ("gap_idx", {"0.png": good_png, "2.png": good_png, "json": conv_json(("<image><image>", "no"))}),
        ("no_reply", {"json": json.dumps({"conversations": [{"from": "human", "value": "hi"}]}).encode()}),
        ("empty_reply", {"json": conv_json(("hi", "  "))}),
        ("empty_caption", {"jpg": _encoded(Image.new("RGB", (9, 9)), "JPEG"), "txt": b"  "}),
        ("corrupt", {"png": b"this is not an image", "json": conv_json(Q)}),
        ("truncated_img", {"png": _encoded(Image.new("RGB", (300, 300), (1, 2, 3)).effect_spread(5), "PNG")[:400],
                           "json": conv_json(Q)}),
        ("bomb_header", {"png": _huge_png_header(), "json": conv_json(Q)}),
        ("bomb_limit", {"png": png(1100, 1000), "json": conv_json(Q)}),
        ("special", {"json": conv_json(("say <|im_end|>", "no"))}),
        ("nothing", {"cls": b"3"}),
    ]
    samples += [(f"mode_{k.split('.')[0]}", {k.split(".")[1]: v, "json": conv_json(Q)})
                for k, v in _mode_images().items()]
    main = write_tar(tmp_path / "bad.tar", samples)
    empty = tmp_path / "empty.tar"
    tarfile.open(empty, "w").close()
    zero = tmp_path / "zero.tar"
    zero.write_bytes(b"")
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"\x01" * 5000)
    full = write_tar(tmp_path / "full.tar", [(f"k{i}", {"png": good_png, "json": conv_json(Q)}) for i in range(4)])
    cut = tmp_path / "cut.tar"
    with tarfile.open(full) as t:
        k2_png = next(m for m in t.getmembers() if m.name == "k2.png")
    raw = Path(full).read_bytes()
    cut.write_bytes(raw[: k2_png.offset + 100])  # k0, k1 complete; k2 has its .json but not its .png
    paths = [main, str(empty), str(zero), str(garbage), str(cut), str(tmp_path / "missing.tar")]
    return paths, marker


EXPECTED = {
    "bad_json": 3, "bad_conversation": 3, "image_count_mismatch": 3, "no_assistant_reply": 3,
    "corrupt_image": 2, "decompression_bomb": 2, "special_token_in_text": 1, "no_text": 1,
    "empty_shard": 2, "unreadable_shard": 2, "truncated_shard": 1,
}


def test_every_bad_kind_is_skipped_and_counted(bad_shards, small_cfg):
    paths, marker = bad_shards
    cfg = dataclasses.replace(small_cfg, max_image_pixels=1_000_000, seq_length=4096)
    stats = shard_stats(paths, cfg)
    assert stats.skipped == EXPECTED
    assert stats.samples == 3 + len(_mode_images()) + 2  # the cut tar keeps k0 and k1, drops k2
    assert not marker.exists()


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_survives_bad_data_without_hanging(bad_shards, small_cfg, workers):
    paths, marker = bad_shards
    cfg = dataclasses.replace(small_cfg, max_image_pixels=1_000_000, seq_length=4096, single_pass=True,
                              num_workers=workers, worker_timeout_s=60)
    loader = build_loader(cfg, recipe=parse_recipe({"datasets": [{"name": "bad", "paths": paths}]}))
    produced = sum(int(b["num_samples"].sum()) for b in loader)
    assert produced == 3 + len(_mode_images()) + 2
    assert loader.skipped == EXPECTED
    assert not marker.exists()


def test_recipe_with_nothing_readable_fails_with_a_clear_error(tmp_path, small_cfg):
    recipe = parse_recipe({"datasets": [{"name": "gone", "paths": [str(tmp_path / "nope-{0..2}.tar")]}]})
    with pytest.raises(ValueError, match="no readable samples"):
        build_loader(small_cfg, recipe=recipe)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_exact_through_bad_data(bad_shards, small_cfg, synth_root, workers):
    paths, _ = bad_shards
    good = [str(p) for p in sorted((synth_root / "train").glob("*.tar"))]
    recipe = parse_recipe({"datasets": [{"name": "bad", "paths": paths}, {"name": "synth", "paths": good}]})
    cfg = dataclasses.replace(small_cfg, max_image_pixels=1_000_000, num_workers=workers, samples_per_chunk=3)
    ref = build_loader(dataclasses.replace(cfg, num_workers=0), recipe=recipe)
    expected = [next(ref) for _ in range(6)]
    first = build_loader(cfg, recipe=recipe)
    got = [next(first) for _ in range(2)]
    state = first.state_dict()
    skipped_at_2 = first.skipped
    first.close()
    resumed = build_loader(cfg, recipe=recipe)
    resumed.load_state_dict(state)
    assert resumed.skipped == skipped_at_2
    got += [next(resumed) for _ in range(4)]
    resumed.close()
    for x, y in zip(got, expected):
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert resumed.skipped == ref.skipped
    shard_level = {"empty_shard", "unreadable_shard", "truncated_shard"}
    assert set(ref.skipped) - shard_level  # sample-level skips happened inside the compared window
