"""Helpers to write small test shards with exactly the members a test needs."""

from __future__ import annotations

import io
import json

from PIL import Image

from nvlm_train.data.shard_writer import ShardWriter


def png(w: int, h: int, colour=(200, 30, 30), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), colour).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def conv_json(*pairs: tuple[str, str], **extra) -> bytes:
    turns = []
    for q, a in pairs:
        turns += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return json.dumps({"conversations": turns, **extra}).encode()


def write_tar(path, samples: list[tuple[str, dict[str, bytes]]]) -> str:
    with ShardWriter(path.parent, path.stem, max_count=10**9) as w:
        for key, members in samples:
            w.write(key, members)
    w.paths[0].rename(path)
    return str(path)
