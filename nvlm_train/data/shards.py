"""Random access to webdataset tar shards: index member offsets once (cached), then read by key.

Random access is what makes the sample order a pure function of (seed, cursor), so the loader's
state is a few integers and resume is exact. Remote shards (``http(s)://``, ``s3://``, ``pipe:``...)
are copied once into the cache through webdataset's ``gopen``.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import braceexpand

from nvlm_train.data.errors import EMPTY_SHARD, TRUNCATED_SHARD, UNREADABLE_SHARD

INDEX_VERSION = 1
_KEY_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


def split_key(name: str) -> tuple[str, str] | None:
    """webdataset's rule: the key is everything up to the first '.' of the basename, the rest is the ext."""
    m = _KEY_RE.match(name)
    return (m.group(1), m.group(2)) if m else None


def default_cache_dir() -> Path:
    env = os.environ.get("NVLM_DATA_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nvlm_train" / "data"


def is_remote(url: str) -> bool:
    return url.startswith("pipe:") or ("://" in url and not url.startswith("file://"))


def expand_paths(patterns: list[str] | str) -> list[str]:
    """Brace-expand, then glob local patterns (sorted). A local pattern matching nothing is kept
    as-is so it is reported as an unreadable shard rather than silently ignored."""
    if isinstance(patterns, str):
        patterns = [patterns]
    out: list[str] = []
    for pat in patterns:
        for p in braceexpand.braceexpand(pat):
            if p.startswith("file://"):
                p = p[len("file://"):]
            if not is_remote(p) and glob.has_magic(p):
                out.extend(sorted(glob.glob(p)) or [p])
            else:
                out.append(p)
    return out


def materialize(url: str, cache_dir: Path) -> str:
    """Local path for a shard: itself if local, else a cached copy fetched with webdataset's gopen."""
    if not is_remote(url):
        return url
    dest = cache_dir / "remote" / (hashlib.sha1(url.encode()).hexdigest()[:16] + ".tar")
    if not dest.is_file():
        import webdataset

        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(f".tmp{os.getpid()}")
        with webdataset.gopen(url, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        tmp.replace(dest)
    return str(dest)


@dataclass
class ShardIndex:
    """Samples of one shard in file order: key -> {ext: (offset, size)}; ``problem`` is a shard reason."""

    path: str
    keys: list[str] = field(default_factory=list)
    members: list[dict[str, tuple[int, int]]] = field(default_factory=list)
    problem: str | None = None
    message: str = ""

    def __len__(self) -> int:
        return len(self.keys)


def _scan(path: str) -> ShardIndex:
    idx = ShardIndex(path)
    try:
        size = os.path.getsize(path)
        groups: dict[str, dict[str, tuple[int, int]]] = {}
        truncated = False
        try:
            with tarfile.open(path, "r:") as tar:
                for m in tar:
                    if not m.isfile():
                        continue
                    if m.offset_data + m.size > size:
                        truncated = True
                        break
                    kv = split_key(m.name)
                    if kv is None:
                        continue
                    groups.setdefault(kv[0], {})[kv[1]] = (m.offset_data, m.size)
                # tarfile stops silently at a cut-off header; a complete archive ends with two zero blocks.
                if not truncated and size < tar.offset + 1024:
                    truncated, idx.message = True, "missing end-of-archive blocks"
        except (tarfile.ReadError, EOFError) as e:
            if not groups:
                raise
            truncated, idx.message = True, str(e)
        if truncated:
            # The last sample may be missing members that were cut off: drop it rather than guess.
            if groups:
                groups.popitem()
            idx.problem = TRUNCATED_SHARD
        idx.keys = list(groups)
        idx.members = [groups[k] for k in idx.keys]
        if not idx.keys and idx.problem is None:
            idx.problem = EMPTY_SHARD
    except (OSError, tarfile.TarError, EOFError) as e:
        idx.problem, idx.message = UNREADABLE_SHARD, f"{type(e).__name__}: {e}"
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            idx.problem, idx.message = EMPTY_SHARD, "zero-byte file"
    return idx


def index_shard(path: str, cache_dir: Path | None = None) -> ShardIndex:
    """Index a local shard, reusing a cached index keyed by path, size and mtime."""
    cache_file = None
    if cache_dir is not None:
        try:
            st = os.stat(path)
            tag = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{INDEX_VERSION}"
            cache_file = cache_dir / "index" / (hashlib.sha1(tag.encode()).hexdigest()[:20] + ".json")
            if cache_file.is_file():
                d = json.loads(cache_file.read_text())
                members = [{e: tuple(v) for e, v in m.items()} for m in d["members"]]
                return ShardIndex(path, d["keys"], members, d["problem"], d["message"])
        except (OSError, ValueError, KeyError):
            cache_file = None
    idx = _scan(path)
    if cache_file is not None and idx.problem != UNREADABLE_SHARD:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps({"keys": idx.keys, "members": idx.members, "problem": idx.problem,
                                       "message": idx.message}))
            tmp.replace(cache_file)
        except OSError:
            pass
    return idx


class ShardReader:
    """Reads a sample's members by offset; keeps a few files open (reopened after a fork)."""

    def __init__(self, max_open: int = 16):
        self.max_open = max_open
        self._files: dict[str, object] = {}
        self._pid = os.getpid()

    def _file(self, path: str):
        if self._pid != os.getpid():
            self._files, self._pid = {}, os.getpid()
        f = self._files.get(path)
        if f is None:
            if len(self._files) >= self.max_open:
                old = next(iter(self._files))
                self._files.pop(old).close()
            f = self._files[path] = open(path, "rb")  # noqa: SIM115 (cached handle)
        return f

    def read(self, path: str, members: dict[str, tuple[int, int]]) -> dict[str, bytes]:
        f = self._file(path)
        out = {}
        for ext, (offset, size) in members.items():
            f.seek(offset)
            data = f.read(size)
            if len(data) != size:
                raise OSError(f"short read of {ext} ({len(data)} of {size} bytes)")
            out[ext] = data
        return out

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}
