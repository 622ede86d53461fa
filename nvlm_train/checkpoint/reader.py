"""Read tensors from a megatron-core ``torch_dist`` checkpoint one layer at a time.

The format is PyTorch DCP: ``.metadata`` lists every tensor's global shape and its stored chunks
(megatron stacks a tower's layers into one tensor with a leading layer dimension and stores at least
one chunk per layer and TP rank). We read only the chunks that intersect the requested layer, each
straight from its byte range in the ``.distcp`` file, so memory stays at about one layer's tensor
whatever the model size. This module imports neither megatron nor transformers (light and fast).
The non-tensor part (config, train state) is ``common.pt``: ``common_state()``.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import MetadataIndex, TensorStorageMetadata

from nvlm_train.checkpoint.layout import CheckpointError


class _FileView(io.RawIOBase):
    """A seekable read-only window [offset, offset + length) of an open file (what torch.load reads)."""

    def __init__(self, f, offset: int, length: int):
        self.f, self.start, self.length, self.pos = f, offset, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.length}[whence]
        self.pos = max(0, min(self.length, base + pos))
        return self.pos

    def readinto(self, buf) -> int:
        n = min(len(buf), self.length - self.pos)
        if n <= 0:
            return 0
        self.f.seek(self.start + self.pos)
        got = self.f.readinto(memoryview(buf)[:n])
        self.pos += got
        return got


class DistCheckpointReader:
    """Lazy access to the tensors of one ``iter_*`` folder."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        if not (self.folder / ".metadata").is_file():
            raise CheckpointError(f"checkpoint {self.folder} has no .metadata: incomplete, or not a torch_dist "
                                  "checkpoint")
        try:
            self.metadata = FileSystemReader(str(self.folder)).read_metadata()
        except Exception as exc:  # noqa: BLE001 - any unreadable metadata is the same user error
            raise CheckpointError(f"cannot read the checkpoint metadata of {self.folder}: {exc}") from exc
        self.tensors: dict[str, TensorStorageMetadata] = {
            k: v for k, v in self.metadata.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)
        }
        self.storage = self.metadata.storage_data or {}
        self._files: dict[str, object] = {}

    def common_state(self) -> dict:
        """``common.pt`` (the non-tensor part: config YAML, train state)."""
        path = self.folder / "common.pt"
        if not path.is_file():
            return {}
        return torch.load(path, map_location="cpu", weights_only=False)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.tensors[key].size)

    def dtype(self, key: str) -> torch.dtype:
        return self.tensors[key].properties.dtype

    def nbytes(self) -> int:
        return sum(m.size.numel() * m.properties.dtype.itemsize for m in self.tensors.values())

    def _file(self, name: str):
        if name not in self._files:
            self._files[name] = open(self.folder / name, "rb", buffering=0)  # noqa: SIM115 - closed in close()
        return self._files[name]

    def _load_chunk(self, key: str, offsets: torch.Size) -> torch.Tensor:
        info = self.storage.get(MetadataIndex(key, offsets))
        if info is None:
            raise CheckpointError(f"checkpoint {self.folder}: no stored data for {key} at offsets {list(offsets)}")
        if getattr(info, "transform_descriptors", None):
            raise CheckpointError(f"checkpoint {self.folder}: {key} uses storage transforms "
                               f"{info.transform_descriptors}, which the converter does not read")
        view = io.BufferedReader(_FileView(self._file(info.relative_path), info.offset, info.length), 1 << 20)
        return torch.load(view, map_location="cpu", weights_only=True)

    def read(self, key: str, layer: int | None = None) -> torch.Tensor:
        """The global tensor ``key`` (``layer``: only that index of the leading layer dimension)."""
        if key not in self.tensors:
            raise CheckpointError(f"checkpoint {self.folder} has no tensor {key!r}")
        meta = self.tensors[key]
        lo = [0] * len(meta.size)
        hi = list(meta.size)
        if layer is not None:
            if not 0 <= layer < meta.size[0]:
                raise CheckpointError(f"checkpoint tensor {key} has {meta.size[0]} layers, layer {layer} requested")
            lo[0], hi[0] = layer, layer + 1
        out = None
        for chunk in meta.chunks:
            c_lo, c_hi = list(chunk.offsets), [o + s for o, s in zip(chunk.offsets, chunk.sizes)]
            i_lo = [max(a, b) for a, b in zip(lo, c_lo)]
            i_hi = [min(a, b) for a, b in zip(hi, c_hi)]
            if any(a >= b for a, b in zip(i_lo, i_hi)):
                continue
            data = self._load_chunk(key, chunk.offsets)
            if i_lo == lo and i_hi == hi and c_lo == lo and c_hi == hi:
                out = data  # the chunk is exactly the region: no copy
                break
            if out is None:
                out = torch.empty([b - a for a, b in zip(lo, hi)], dtype=meta.properties.dtype)
            src, dst = data, out
            for d, (a, b) in enumerate(zip(i_lo, i_hi)):
                src = src.narrow(d, a - c_lo[d], b - a)
                dst = dst.narrow(d, a - lo[d], b - a)
            dst.copy_(src)
        if out is None:
            raise CheckpointError(f"checkpoint {self.folder}: no stored chunk covers {key} layer {layer}")
        return out[0] if layer is not None else out

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __enter__(self) -> DistCheckpointReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
