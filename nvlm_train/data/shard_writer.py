"""Write webdataset tar shards: deterministic bytes, size/count limits, verification after writing."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Mapping
from pathlib import Path

from nvlm_train.data.shards import split_key


class ShardWriter:
    """Writes samples (key -> {ext: bytes}) into ``{prefix}-000000.tar``, ``-000001.tar``, ...

    A new shard starts when the current one would exceed ``max_count`` samples or ``max_bytes``
    (a single larger sample still gets its own shard). Member mtimes are 0 so output is reproducible.
    """

    def __init__(self, out_dir: str | Path, prefix: str, max_count: int = 1000, max_bytes: int = 1 << 30):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prefix, self.max_count, self.max_bytes = prefix, max_count, max_bytes
        self.paths: list[Path] = []
        self.counts: list[int] = []
        self._tar: tarfile.TarFile | None = None
        self._count = 0
        self._bytes = 0

    def _open(self) -> None:
        path = self.out_dir / f"{self.prefix}-{len(self.paths):06d}.tar"
        self.paths.append(path)
        self.counts.append(0)
        self._tar = tarfile.open(path, "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115 (closed in close())
        self._count = self._bytes = 0

    def write(self, key: str, members: Mapping[str, bytes]) -> None:
        if "." in key.rsplit("/", 1)[-1]:
            raise ValueError(f"sample key {key!r} must not contain '.' (webdataset splits key and extension there)")
        size = sum(len(b) + 1024 for b in members.values())
        if self._tar is None or self._count >= self.max_count or (self._count and self._bytes + size > self.max_bytes):
            self.close()
            self._open()
        for ext in sorted(members):
            data = members[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            self._tar.addfile(info, io.BytesIO(data))
        self._count += 1
        self.counts[-1] += 1
        self._bytes += size

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def verify_shard(path: str | Path, expected_samples: int | None = None) -> int:
    """Re-read a shard fully; returns its sample count, raises ``ValueError`` if it is unreadable or short."""
    keys = set()
    try:
        with tarfile.open(path, "r") as tar:
            for m in tar:
                if m.isfile():
                    f = tar.extractfile(m)
                    if f is None or len(f.read()) != m.size:
                        raise ValueError(f"{path}: member {m.name} is truncated")
                    kv = split_key(m.name)
                    if kv is not None:
                        keys.add(kv[0])
    except tarfile.TarError as e:
        raise ValueError(f"{path}: not a readable tar file ({e})") from e
    if expected_samples is not None and len(keys) != expected_samples:
        raise ValueError(f"{path}: expected {expected_samples} samples, found {len(keys)}")
    return len(keys)
