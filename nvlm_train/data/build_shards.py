"""Convert LLaVA-style JSON + image folder, or caption pairs, into verified webdataset shards."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from nvlm_train.data.images import IMAGE_EXTS
from nvlm_train.data.shard_writer import ShardWriter, verify_shard

_BAD_KEY = re.compile(r"[^A-Za-z0-9_\-]")


def _key(raw: object, i: int, seen: set[str]) -> str:
    key = _BAD_KEY.sub("_", str(raw)) or f"sample{i}"
    if key in seen:
        key = f"{key}_{i}"
    seen.add(key)
    return key


def _ext(path: Path) -> str:
    ext = path.suffix.lower().lstrip(".")
    if ext not in IMAGE_EXTS:
        raise ValueError(f"{path}: unsupported image type {ext!r}; expected one of {IMAGE_EXTS}")
    return ext


def llava_samples(json_path: str | Path, image_root: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """LLaVA records (``id``, ``image`` str or list, ``conversations``, optional ``system``) -> samples."""
    records = json.loads(Path(json_path).read_text())
    if not isinstance(records, list):
        raise ValueError(f"{json_path}: expected a JSON list of LLaVA records")
    root, seen = Path(image_root), set()
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or "conversations" not in rec:
            raise ValueError(f"{json_path}: record {i} has no 'conversations'")
        key = _key(rec.get("id", f"sample{i}"), i, seen)
        images = rec.get("image") or []
        images = [images] if isinstance(images, str) else list(images)
        members: dict[str, bytes] = {}
        for n, name in enumerate(images):
            p = root / name
            ext = _ext(p)
            members[ext if len(images) == 1 else f"{n}.{ext}"] = p.read_bytes()
        meta = {"conversations": rec["conversations"]}
        if "system" in rec:
            meta["system"] = rec["system"]
        members["json"] = json.dumps(meta, ensure_ascii=False).encode()
        yield key, members


def caption_samples(folder: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``name.jpg`` + ``name.txt`` pairs -> img2dataset-layout samples (metadata ``.json`` included)."""
    seen: set[str] = set()
    for i, img in enumerate(sorted(p for p in Path(folder).iterdir() if p.suffix.lower().lstrip(".") in IMAGE_EXTS)):
        txt = img.with_suffix(".txt")
        if not txt.is_file():
            continue
        key = _key(img.stem, i, seen)
        meta = {"key": key, "source": img.name, "status": "success"}
        yield key, {_ext(img): img.read_bytes(), "txt": txt.read_bytes(), "json": json.dumps(meta).encode()}


def write_shards(samples: Iterator[tuple[str, dict[str, bytes]]], out_dir: str | Path, prefix: str = "shard",
                 max_count: int = 10000, max_bytes: int = 1 << 30,
                 progress: Callable[[int], None] | None = None) -> list[Path]:
    """Write size-limited shards, then re-read each to verify its sample count."""
    with ShardWriter(out_dir, prefix, max_count=max_count, max_bytes=max_bytes) as w:
        for key, members in samples:
            w.write(key, members)
            if progress is not None:
                progress(1)
    for path, count in zip(w.paths, w.counts):
        verify_shard(path, count)
    return list(w.paths)
