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

from nvlm_train.config.limits import DEFAULT_MAX_MEMBER_BYTES
from nvlm_train.data.errors import (
    DUPLICATE_KEY,
    EMPTY_SHARD,
    OVERSIZED_MEMBER,
    TRUNCATED_SHARD,
    UNREADABLE_SHARD,
    UNSAFE_MEMBER,
)

INDEX_VERSION = 2
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
    """Samples of one shard in file order: key -> {ext: (offset, size)}.

    ``problem`` is a shard-level reason (unreadable, truncated, empty); ``skips`` counts, by reason, the
    samples that indexing already had to leave out (unsafe members, repeated keys, oversized members,
    the sample a truncation cut).
    """

    path: str
    keys: list[str] = field(default_factory=list)
    members: list[dict[str, tuple[int, int]]] = field(default_factory=list)
    problem: str | None = None
    message: str = ""
    skips: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)


def _unsafe(m: tarfile.TarInfo) -> str | None:
    """Why a member must not be used: a link or special file, or a path that leaves the shard."""
    if m.issym() or m.islnk():
        return f"{m.name} is a link"
    if not m.isfile():
        return None if m.isdir() else f"{m.name} is not a regular file"
    parts = m.name.replace("\\", "/").split("/")
    if m.name.startswith("/") or ".." in parts:
        return f"{m.name} escapes the shard"
    return None


def _cut_header(path: str, offset: int, size: int) -> tuple[bool, str | None]:
    """(whether a member header starts at ``offset`` and is cut off by the end of the file, its name if
    the name field survived). Zero bytes there are end-of-archive padding, not a header."""
    with open(path, "rb") as f:
        f.seek(offset)
        raw = f.read(min(512, size - offset))
    if not raw.strip(b"\0"):
        return False, None
    name = raw[:100].split(b"\0", 1)[0].decode("utf-8", "replace") if len(raw) >= 100 else ""
    return True, name or None


class _Grouper:
    """Members -> samples in file order, webdataset's way (consecutive members with one key), leaving out
    and counting what cannot be used. Only complete samples end up in ``groups``."""

    def __init__(self, max_member_bytes: int):
        self.max_member_bytes = max_member_bytes
        self.groups: dict[str, dict[str, tuple[int, int]]] = {}
        self.bad: set[str] = set()  # keys of samples left out
        self.skips: dict[str, int] = {}
        self.last_key: str | None = None

    def _skip(self, key: str, reason: str) -> None:
        if key in self.bad:
            return
        self.bad.add(key)
        self.groups.pop(key, None)
        self.skips[reason] = self.skips.get(reason, 0) + 1  # one per sample left out

    def add(self, m: tarfile.TarInfo) -> None:
        kv = split_key(m.name)
        key = kv[0] if kv else m.name
        if m.isdir():
            return
        if key != self.last_key and (key in self.groups or key in self.bad):
            # The key comes back after another sample (webdataset would yield two samples with one key):
            # counted once per repeat; the first sample is kept, the members of the repeat are dropped.
            self.skips[DUPLICATE_KEY] = self.skips.get(DUPLICATE_KEY, 0) + 1
            self.bad.add(key)
            self.last_key = key
            return
        self.last_key = key
        if key in self.bad:
            return
        if _unsafe(m):
            self._skip(key, UNSAFE_MEMBER)
            return
        if kv is None:
            return
        ext = kv[1]
        if m.size > self.max_member_bytes:
            self._skip(key, OVERSIZED_MEMBER)
            return
        group = self.groups.setdefault(key, {})
        if ext in group:
            self._skip(key, DUPLICATE_KEY)
            return
        group[ext] = (m.offset_data, m.size)

    def cut(self, key: str | None, member_cut: bool = True) -> None:
        """The file ends (or stops being readable) inside sample ``key``; None: the sample is not known.
        ``member_cut``: a member was cut off or is unreadable, so some sample is incomplete; else the file
        ends between members. Without a key, a last sample that lacks members its predecessor has is
        taken as the cut one (shards hold samples of one shape; a complete text-only sample after an
        image sample in a mixed shard is dropped by this rule, and counted)."""
        if key is not None:
            self._skip(key, TRUNCATED_SHARD)
            return
        keys = list(self.groups)
        if len(keys) >= 2 and set(self.groups[keys[-1]]) < set(self.groups[keys[-2]]):
            self._skip(keys[-1], TRUNCATED_SHARD)  # the last sample lost members it should have
        elif member_cut:
            self.skips[TRUNCATED_SHARD] = self.skips.get(TRUNCATED_SHARD, 0) + 1  # a new sample was cut


def _scan(path: str, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> ShardIndex:
    idx = ShardIndex(path)
    try:
        size = os.path.getsize(path)
        grouper = _Grouper(max_member_bytes)
        try:
            with tarfile.open(path, "r:") as tar:
                for m in tar:
                    if m.offset_data + m.size > size:  # cut inside this member's data
                        kv = split_key(m.name)
                        grouper.cut(kv[0] if kv else m.name)
                        idx.message = f"ends inside {m.name}"
                        break
                    grouper.add(m)
                else:
                    # tarfile stops silently at a cut-off or corrupt header; a complete archive ends with two
                    # zero blocks.
                    member_cut, name = _cut_header(path, tar.offset, size)
                    if member_cut and size - tar.offset >= 512:  # a whole header that does not parse
                        grouper.cut(None)
                        idx.message = (f"unreadable member header at byte {tar.offset}: the {size - tar.offset} "
                                       f"bytes from there on are skipped")
                    elif size < tar.offset + 1024:
                        kv = split_key(name) if name else None
                        grouper.cut(kv[0] if kv else name, member_cut)
                        idx.message = (f"ends inside the header of {name or 'a member'}" if member_cut
                                       else "ends between members (no end-of-archive blocks)")
        except (tarfile.ReadError, EOFError) as e:
            if not grouper.groups and not grouper.skips:
                raise
            grouper.cut(None)  # an unreadable header: from here on the shard cannot be read
            idx.message = str(e)
        idx.keys = list(grouper.groups)
        idx.members = [grouper.groups[k] for k in idx.keys]
        idx.skips = grouper.skips
        if not idx.keys and not idx.skips:
            idx.problem = EMPTY_SHARD
    except (OSError, tarfile.TarError, EOFError) as e:
        idx.problem, idx.message = UNREADABLE_SHARD, f"{type(e).__name__}: {e}"
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            idx.problem, idx.message = EMPTY_SHARD, "zero-byte file"
    return idx


def index_shard(path: str, cache_dir: Path | None = None,
                max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> ShardIndex:
    """Index a local shard, reusing a cached index keyed by path, size, mtime and the member limit."""
    cache_file = None
    if cache_dir is not None:
        try:
            st = os.stat(path)
            tag = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{INDEX_VERSION}|{max_member_bytes}"
            cache_file = cache_dir / "index" / (hashlib.sha1(tag.encode()).hexdigest()[:20] + ".json")
            if cache_file.is_file():
                d = json.loads(cache_file.read_text())
                members = [{e: tuple(v) for e, v in m.items()} for m in d["members"]]
                return ShardIndex(path, d["keys"], members, d["problem"], d["message"], d["skips"])
        except (OSError, ValueError, KeyError):
            cache_file = None
    idx = _scan(path, max_member_bytes)
    if cache_file is not None and idx.problem != UNREADABLE_SHARD:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps({"keys": idx.keys, "members": idx.members, "problem": idx.problem,
                                       "message": idx.message, "skips": idx.skips}))
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
