"""Faults of the shard stream, on tars written here with ``tarfile`` (not the project's writer): every
complete sample before a cut is kept, every fault is counted under its own reason, the run goes on."""

from __future__ import annotations

import dataclasses
import io
import os
import tarfile
from pathlib import Path

import pytest

from nvlm_train.data.errors import DataQualityError, SkipPolicy
from nvlm_train.data.loader import build_loader
from nvlm_train.data.recipe import parse_recipe
from nvlm_train.data.shards import index_shard
from nvlm_train.data.stats import shard_stats
from tests.data.helpers import conv_json, png

PNG = png(20, 20)


def _json(i: int) -> bytes:
    return conv_json(("<image>\nWhat colour?", f"red {i}"))


def _member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def _tar(path, members: list[tuple]) -> str:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return str(path)


def _samples(n: int) -> list[tuple]:
    return [m for i in range(n) for m in (_member(f"s{i}.json", _json(i)), _member(f"s{i}.png", PNG))]


def _offsets(path: str) -> dict[str, tuple[int, int]]:
    """member name -> (header offset, data offset)."""
    with tarfile.open(path) as tar:
        return {m.name: (m.offset, m.offset_data) for m in tar}


def _cut(src: str, dst, size: int) -> str:
    with open(src, "rb") as f:
        data = f.read(size)
    dst.write_bytes(data)
    return str(dst)


@pytest.fixture
def three(tmp_path):
    return _tar(tmp_path / "three.tar", _samples(3))


@pytest.mark.parametrize("where,kept,truncated", [
    ("in s2.json data", ["s0", "s1"], 1),          # the cut sample is new: s1 before it is complete
    ("in s2.png data", ["s0", "s1"], 1),           # the cut sample is s2 itself
    ("in s2.json header, name readable", ["s0", "s1"], 1),
    ("in s2.png header, name readable", ["s0", "s1"], 1),
    ("in s2.json header, name cut", ["s0", "s1"], 1),
    ("between samples s1 and s2", ["s0", "s1"], 0),
    ("between s2.json and s2.png", ["s0", "s1"], 1),  # s2 lacks the png its predecessors have
    ("in the end-of-archive blocks", ["s0", "s1", "s2"], 0),
])
def test_truncated_shard_keeps_every_complete_sample(three, tmp_path, where, kept, truncated):
    off = _offsets(three)
    header_j, data_j = off["s2.json"]
    header_p, data_p = off["s2.png"]
    end = data_p + len(PNG)
    size = {
        "in s2.json data": data_j + 10,
        "in s2.png data": data_p + 10,
        "in s2.json header, name readable": header_j + 300,
        "in s2.png header, name readable": header_p + 300,
        "in s2.json header, name cut": header_j + 50,
        "between samples s1 and s2": header_j,
        "between s2.json and s2.png": header_p,
        "in the end-of-archive blocks": -(-end // 512) * 512 + 512,
    }[where]
    idx = index_shard(_cut(three, tmp_path / "cut.tar", size))
    assert idx.keys == kept
    assert idx.skips == ({"truncated_shard": truncated} if truncated else {})
    assert idx.problem is None


def test_corrupt_header_mid_shard_is_counted(three, tmp_path):
    """A header that does not parse, in the middle of the file: what comes before is kept, the loss counted."""
    header = _offsets(three)["s1.json"][0]
    data = bytearray(Path(three).read_bytes())
    data[header:header + 512] = bytes(range(256)) * 2
    bad = tmp_path / "corrupt.tar"
    bad.write_bytes(bytes(data))
    idx = index_shard(str(bad))
    assert idx.keys == ["s0"]
    assert idx.skips == {"truncated_shard": 1}
    assert f"unreadable member header at byte {header}" in idx.message


def test_repeated_keys_after_a_skip_or_with_an_unsafe_member(tmp_path):
    shard = _tar(tmp_path / "repeat.tar", [
        _member("a.json", _json(0)), _member("a.png", PNG),
        _member("b.json", _json(1)), _member("b.png", PNG),
        _member("a.txt", kind=tarfile.SYMTYPE, link="/etc/passwd"),  # a's key again, as a link
        _member("c.json", _json(2)), _member("c.png", b"x" * 5000),     # c skipped: oversized
        _member("d.json", _json(3)), _member("d.png", PNG),
        _member("c.json", _json(4)), _member("c.png", PNG),              # c again
    ])
    idx = index_shard(shard, max_member_bytes=4096)
    assert idx.keys == ["a", "b", "d"]  # the first a is kept
    assert idx.skips == {"duplicate_key": 2, "oversized_member": 1}


def test_each_fault_counted_under_its_own_reason(tmp_path):
    link = _member("s1.png", kind=tarfile.SYMTYPE, link="/etc/passwd")
    hard = _member("s3.png", kind=tarfile.LNKTYPE, link="s0.png")
    shard = _tar(tmp_path / "faults.tar", [
        _member("s0.json", _json(0)), _member("s0.png", PNG),
        _member("s1.json", _json(1)), link,                                # a symlink member
        _member("../s2.json", _json(2)), _member("../s2.png", PNG),        # escapes the shard
        _member("s3.json", _json(3)), hard,                                # a hard link
        _member("/abs/s4.json", _json(4)),                                 # absolute path
        _member("s5.json", _json(5)), _member("s5.png", PNG),
        _member("s0.json", _json(6)), _member("s0.png", PNG),              # s0 again: duplicate key
        _member("s6.json", _json(7)), _member("s6.png", b"x" * 5000),      # over the member limit
        _member("s7.json", _json(8)), _member("s7.png", PNG),
    ])
    idx = index_shard(shard, max_member_bytes=4096)
    assert idx.keys == ["s0", "s5", "s7"]
    assert idx.skips == {"unsafe_member": 4, "duplicate_key": 1, "oversized_member": 1}
    assert idx.members[0]["json"][1] == len(_json(0))  # the first s0 is the one kept


def test_unopenable_shards_and_a_mixed_list(tmp_path, small_cfg, three):
    bad = [str(tmp_path / "missing.tar"), str(tmp_path / "folder.tar"), str(tmp_path / "text.tar")]
    os.mkdir(bad[1])
    (tmp_path / "text.tar").write_text("this is not a tar archive\n" * 40)
    cut = _cut(three, tmp_path / "cut.tar", _offsets(three)["s2.json"][1] + 10)
    cfg = dataclasses.replace(small_cfg, seq_length=4096, max_tiles=1)
    stats = shard_stats([bad[0], three, bad[1], cut, bad[2]], cfg)
    assert stats.samples == 3 + 2
    assert dict(stats.skipped) == {"unreadable_shard": 3, "truncated_shard": 1}
    assert stats.as_dict()["skipped_by_dataset"] == {"shards": {"truncated_shard": 1, "unreadable_shard": 3}}


def test_pixel_limit_is_a_counted_skip_not_a_crash(tmp_path, small_cfg):
    big = png(1200, 1000)  # 1.2 Mpx: over a 1 Mpx limit
    shard = _tar(tmp_path / "px.tar", [_member("a.json", _json(0)), _member("a.png", big),
                                       _member("b.json", _json(1)), _member("b.png", PNG)])
    stats = shard_stats([shard], dataclasses.replace(small_cfg, seq_length=4096, max_image_pixels=1_000_000))
    assert (stats.samples, dict(stats.skipped)) == (1, {"decompression_bomb": 1})


def test_loader_counts_per_dataset_and_resumes_with_the_same_counts(tmp_path, small_cfg, three):
    bad = _tar(tmp_path / "bad.tar", [m for i in range(4) for m in (
        _member(f"b{i}.json", b"{oops" if i % 2 else _json(i)), _member(f"b{i}.png", PNG))])
    recipe = parse_recipe({"datasets": [{"name": "good", "paths": [three]}, {"name": "half_bad", "paths": [bad]}]})
    cfg = dataclasses.replace(small_cfg, seq_length=4096, max_tiles=1, micro_batch_size=1, max_skip_fraction=1.0)
    ref = build_loader(cfg, recipe=recipe)
    expected = [next(ref) for _ in range(6)]
    first = build_loader(cfg, recipe=recipe)
    for _ in range(3):
        next(first)
    state, counts = first.state_dict(), first.skipped_by_dataset
    assert set(counts) == {"half_bad"} and set(counts["half_bad"]) == {"bad_json"}  # the cut is past a skip
    resumed = build_loader(cfg, recipe=recipe)
    resumed.load_state_dict(state)
    assert resumed.skipped_by_dataset == counts
    rest = [next(resumed) for _ in range(3)]
    for a, b in zip(expected[3:], rest):
        assert all(bool((a[k] == b[k]).all()) for k in ("tokens", "labels", "loss_mask"))
    assert resumed.skipped_by_dataset == ref.skipped_by_dataset
    assert ref.skipped_by_dataset["half_bad"]["bad_json"] >= 1


def test_skip_policy_window():
    policy = SkipPolicy(max_fraction=0.25, window=4)
    for reason in ("bad_json", None, None):
        policy.record("d" if reason else None, reason)
    assert policy.exceeded() is None  # window not full yet
    policy.record(None, None)
    assert policy.exceeded() is None  # 1 of 4 = 25%: allowed
    policy.record("d", "too_long")  # the first (bad_json) leaves the window: still 1 of 4
    assert policy.exceeded() is None
    policy.record("d", "too_long")
    msg = policy.exceeded()
    assert msg == ("2 of the last 4 samples were skipped (50%, more than data.max_skip_fraction=0.25): "
                   "d: too_long x2. Fix or remove these datasets, or raise data.max_skip_fraction")
    assert issubclass(DataQualityError, RuntimeError)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_permission_denied_is_an_unreadable_shard(tmp_path, three):
    locked = tmp_path / "locked.tar"
    locked.write_bytes(Path(three).read_bytes())
    locked.chmod(0)
    idx = index_shard(str(locked))
    assert (idx.problem, idx.keys) == ("unreadable_shard", [])
    assert "Permission" in idx.message


def test_index_time_losses_count_toward_the_skip_fraction(tmp_path, small_cfg, three):
    """9 samples of 12 oversized at index time (and an unreadable shard) stop the loader before training."""
    big = _tar(tmp_path / "big.tar", [m for i in range(9) for m in (
        _member(f"g{i}.json", _json(i)), _member(f"g{i}.png", b"x" * 5000))])
    recipe = parse_recipe({"datasets": [{"name": "ok", "paths": [three]},
                                        {"name": "huge", "paths": [big, str(tmp_path / "gone.tar")]}]})
    cfg = dataclasses.replace(small_cfg, seq_length=4096, max_member_bytes=4096, skip_window=8)
    with pytest.raises(DataQualityError, match=r"indexing left out about 10 of 13 samples \(77%, more than "
                                               r"data.max_skip_fraction=0.1\): huge: oversized_member x9, "
                                               r"huge: unreadable_shard x1"):
        build_loader(cfg, recipe=recipe)
    build_loader(dataclasses.replace(cfg, max_skip_fraction=1.0), recipe=recipe)  # 1.0: never stops
