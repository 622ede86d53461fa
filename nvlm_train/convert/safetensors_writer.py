"""Write HF-sharded safetensors incrementally: tensor by tensor, never holding a shard in memory.

Shapes and dtypes are known before any data (planned from checkpoint metadata), so each shard's header
is written first and the tensors' bytes are appended as they are produced. The files are standard
safetensors (8-byte header length, JSON header, contiguous little-endian data) plus
``model.safetensors.index.json``, as ``save_pretrained`` writes them.
"""

from __future__ import annotations

import json
import queue
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from nvlm_train.convert.errors import ConvertError

_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64",
           torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL"}


@dataclass(frozen=True)
class TensorPlan:
    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * self.dtype.itemsize


def plan_shards(plans: list[TensorPlan], max_shard_bytes: int) -> list[list[TensorPlan]]:
    """Consecutive tensors grouped into shards of at most ``max_shard_bytes`` (a bigger tensor gets its own)."""
    shards: list[list[TensorPlan]] = [[]]
    size = 0
    for p in plans:
        if shards[-1] and size + p.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(p)
        size += p.nbytes
    return shards


def _header(plans: list[TensorPlan]) -> bytes:
    entries: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for p in plans:
        entries[p.key] = {"dtype": _DTYPES[p.dtype], "shape": list(p.shape),
                          "data_offsets": [offset, offset + p.nbytes]}
        offset += p.nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


class _FileWorker:
    """Runs the file writes in a background thread (they release the GIL), so reading and splitting the
    next tensor overlaps with writing this one. At most ``depth`` tensors wait, which bounds memory."""

    def __init__(self, depth: int = 2):
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.file = None
        self.thread = threading.Thread(target=self._loop, name="safetensors-writer", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            op, arg = self.queue.get()
            if op == "stop":
                return
            if self.error is not None:
                continue
            try:
                if op == "open":
                    path, header = arg
                    self.file = open(path, "wb", buffering=0)  # noqa: SIM115 - closed by "close"
                    self._write(header)
                elif op == "data":
                    self._write(memoryview(arg.numpy()))
                elif op == "close" and self.file is not None:
                    self.file.close()
                    self.file = None
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                self.error = exc

    def _write(self, view) -> None:
        while len(view):
            view = view[self.file.write(view):]

    def submit(self, op: str, arg=None) -> None:
        self.raise_error()
        self.queue.put((op, arg))

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def finish(self) -> None:
        self.queue.put(("stop", None))
        self.thread.join()
        if self.file is not None:
            self.file.close()
            self.file = None
        self.raise_error()


class ShardedSafetensorsWriter:
    """``write`` tensors in plan order; ``close`` writes the index. Raises on any deviation from the plan."""

    def __init__(self, out_dir: Path, plans: list[TensorPlan], max_shard_bytes: int):
        for p in plans:
            if p.dtype not in _DTYPES:
                raise ConvertError(f"{p.key}: dtype {p.dtype} cannot be written to safetensors")
        self.out = Path(out_dir)
        self.shards = plan_shards(plans, max_shard_bytes)
        n = len(self.shards)
        self.names = [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
        self.total = sum(p.nbytes for p in plans)
        self._shard, self._pos = -1, 0
        self._worker = _FileWorker()
        self.bytes_written = 0

    def _next_plan(self) -> TensorPlan | None:
        while self._shard < 0 or self._pos >= len(self.shards[self._shard]):
            if self._shard >= 0:
                self._worker.submit("close")
            self._shard += 1
            self._pos = 0
            if self._shard >= len(self.shards):
                return None
            header = _header(self.shards[self._shard])
            self._worker.submit("open", (self.out / self.names[self._shard], header))
        return self.shards[self._shard][self._pos]

    def write(self, key: str, tensor: torch.Tensor) -> None:
        plan = self._next_plan()
        if plan is None or plan.key != key:
            raise ConvertError(f"internal: wrote {key!r} but the plan expects {plan.key if plan else 'nothing'!r}")
        if tuple(tensor.shape) != plan.shape or tensor.dtype != plan.dtype:
            raise ConvertError(f"{key}: produced {tuple(tensor.shape)} {tensor.dtype}, "
                               f"planned {plan.shape} {plan.dtype}")
        self._worker.submit("data", tensor.detach().contiguous().reshape(-1).view(torch.uint8))
        self._pos += 1
        self.bytes_written += plan.nbytes

    def close(self) -> list[Path]:
        if self._next_plan() is not None:
            raise ConvertError(f"internal: {self.shards[self._shard][self._pos].key!r} was never written")
        self._worker.finish()
        weight_map = {p.key: name for shard, name in zip(self.shards, self.names) for p in shard}
        index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(weight_map.items()))}
        (self.out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        return [self.out / n for n in self.names]

    def abort(self) -> None:
        """Stop the writer thread (after an error or after ``close``); idempotent."""
        if self._worker.thread.is_alive():
            self._worker.queue.put(("stop", None))
            self._worker.thread.join()
        if self._worker.file is not None:
            self._worker.file.close()
            self._worker.file = None
