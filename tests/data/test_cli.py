import json
import subprocess
import sys

import pytest
from PIL import Image

from nvlm_train.cli.data import main
from tests.data.helpers import conv_json, png, write_tar

SMALL = ["--image-size", "28", "--tokens-per-tile", "4", "--seq-length", "400"]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch, tok_dir):
    monkeypatch.setenv("NVLM_DATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NVLM_DEMO_TOKENIZER", str(tok_dir))


def test_help_for_every_command():
    out = subprocess.run([sys.executable, "-m", "nvlm_train.cli.data", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and all(c in out.stdout for c in ("synth", "build-shards", "stats", "inspect"))
    for cmd in ("synth", "build-shards", "stats", "inspect"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0


def test_synth_then_stats_json(tmp_path, capsys):
    assert main(["-q", "synth", str(tmp_path / "d"), "--train", "30", "--heldout", "5", "--captions", "4"]) == 0
    capsys.readouterr()
    shards = [str(p) for p in sorted((tmp_path / "d").glob("*/*.tar"))]
    assert main(["stats", *shards, *SMALL, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["samples"] == 39 and stats["skipped"] == {}
    assert stats["tiles"] > 39 and stats["tokens"] > stats["tiles"] * 4


def test_stats_exits_zero_with_skips(tmp_path, capsys):
    shard = write_tar(tmp_path / "s.tar", [("a", {"png": png(20, 20), "json": conv_json(("<image>\nq", "a"))}),
                                           ("b", {"json": b"{oops"})])
    assert main(["stats", shard, str(tmp_path / "missing.tar"), *SMALL, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats == {"samples": 1, "tiles": 1, "tokens": stats["tokens"], "target_tokens": 2,
                     "skipped": {"bad_json": 1, "unreadable_shard": 1},
                     "skipped_by_dataset": {"shards": {"bad_json": 1, "unreadable_shard": 1}}}


def test_inspect_prints_token_view_and_writes_contact_sheet(tmp_path, capsys):
    shard = write_tar(tmp_path / "s.tar", [("k", {"png": png(60, 20), "json": conv_json(("<image>\nColour?", "red"))})])
    sheet = tmp_path / "sheet.png"
    assert main(["inspect", shard, "--out", str(sheet), *SMALL]) == 0
    out = capsys.readouterr().out
    assert "key:   k" in out and "user: <image>\nColour?" in out and "tiles per image: [4]" in out
    assert "<Image><tile_1><|vision_pad|>x4<tile_2><|vision_pad|>x4<tile_3><|vision_pad|>x4" \
           "<tile_global_thumbnail><|vision_pad|>x4</Image>" in out
    assert "assistant\n[[red<|im_end|>]]" in out
    assert Image.open(sheet).size == (4 * 28 + 5 * 4, 28 + 2 * 4)


def test_build_shards_llava_and_captions(tmp_path, capsys):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for name in ("a.png", "b.png"):
        (imgs / name).write_bytes(png(30, 30))
    (imgs / "a.txt").write_text("a red square")
    records = [
        {"id": "x.1", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nQ"},
                                                          {"from": "gpt", "value": "A"}]},
        {"id": "x/2", "image": ["a.png", "b.png"], "conversations": [{"from": "human", "value": "<image><image>"},
                                                                     {"from": "gpt", "value": "B"}]},
        {"id": "t", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
    ]
    (tmp_path / "llava.json").write_text(json.dumps(records))
    assert main(["-q", "build-shards", "--llava-json", str(tmp_path / "llava.json"), "--image-root", str(imgs),
                 "--out", str(tmp_path / "out"), "--max-count", "2"]) == 0
    assert main(["-q", "build-shards", "--captions", str(imgs), "--out", str(tmp_path / "cap"), "--prefix", "c"]) == 0
    capsys.readouterr()
    shards = sorted(str(p) for p in (tmp_path / "out").glob("*.tar"))
    assert len(shards) == 2
    assert main(["stats", *shards, str(tmp_path / "cap" / "c-000000.tar"), *SMALL, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["samples"] == 4 and stats["skipped"] == {} and stats["tiles"] == 4


def test_stats_on_nothing_readable_still_reports(tmp_path, capsys):
    (tmp_path / "zero.tar").write_bytes(b"")
    assert main(["stats", str(tmp_path / "zero.tar"), str(tmp_path / "gone.tar"), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats == {"samples": 0, "tiles": 0, "tokens": 0, "target_tokens": 0,
                     "skipped": {"empty_shard": 1, "unreadable_shard": 1},
                     "skipped_by_dataset": {"shards": {"empty_shard": 1, "unreadable_shard": 1}}}
