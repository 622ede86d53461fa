"""Send a dict of host tensors from one rank to others without a device sync.

Megatron's ``tensor_parallel.broadcast_data`` moves everything to CUDA and reads the sizes back
(a sync per call, and no CPU runs). Here a message is a fixed-size int64 header (per known key:
present, dtype, shape; plus a few caller ints) and one flat byte buffer with every tensor, sent
point to point over a gloo group: the sender's ``isend``s never wait for a receiver, so a rank
that needs the message later in a pipeline schedule (after its activations arrive) cannot
deadlock the sender, and received tensors are host tensors (pinned on CUDA machines).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import torch
import torch.distributed as dist

# Every dtype a message may carry; a tensor's dtype travels as its index here.
DTYPES = (torch.int64, torch.float32, torch.uint8, torch.bool, torch.int32, torch.float16, torch.bfloat16,
          torch.float64)
MAX_NDIM = 4
_PER_KEY = 3 + MAX_NDIM  # kind, dtype, ndim, shape (padded)
_DATA, _SPEC = 1, 2  # a key's kind: its bytes follow in the message / only its dtype and shape (data elsewhere)
_ALIGN = 8  # every tensor starts at a multiple of 8 bytes, so a view as any dtype above is aligned
_TAGS = 1 << 20


def gloo_twin(group: dist.ProcessGroup) -> dist.ProcessGroup | None:
    """Collective over the world: a gloo group with the ranks of ``group``.

    Every rank passes its own group of one partition (e.g. megatron's model-parallel groups); every
    group of the partition is created on every rank, in the same order.
    """
    every: list = [None] * dist.get_world_size()
    dist.all_gather_object(every, sorted(dist.get_process_group_ranks(group)))
    mine = None
    for ranks in sorted({tuple(r) for r in every}):
        g = dist.new_group(list(ranks), backend="gloo")
        if dist.get_rank() in ranks:
            mine = g
    return mine


def _padded(nbytes: int) -> int:
    return -(-nbytes // _ALIGN) * _ALIGN


class HostChannel:
    """Messages of host tensors from ``src`` to other ranks of ``group`` (gloo), in order.

    ``keys`` is the vocabulary of tensor names both sides agree on; ``num_meta`` caller ints ride in
    the header; ``described`` tensors travel as dtype and shape only (for a receiver that gets their
    data another way). Sends are asynchronous: call ``flush()`` before the sent tensors may change.
    """

    def __init__(self, group: dist.ProcessGroup, src: int, keys: Sequence[str], num_meta: int = 0,
                 pin: bool = False):
        self.group, self.src, self.keys, self.num_meta, self.pin = group, src, tuple(keys), num_meta, pin
        self._pending: list = []  # (works, buffers) of sends in flight
        self._sent: dict[int, int] = {}  # messages queued per destination (their tags)
        self._received = 0

    def _header(self, tensors: dict[str, torch.Tensor], described: dict[str, torch.Tensor],
                meta: Sequence[int]) -> torch.Tensor:
        h = torch.zeros(len(self.keys) * _PER_KEY + self.num_meta, dtype=torch.int64)
        unknown = (set(tensors) | set(described)) - set(self.keys)
        if unknown:
            raise KeyError(f"HostChannel: keys {sorted(unknown)} are not in the channel's vocabulary {self.keys}")
        for i, k in enumerate(self.keys):
            kind, t = (_DATA, tensors[k]) if k in tensors else (_SPEC, described.get(k))
            if t is None:
                continue
            if t.dim() > MAX_NDIM:
                raise ValueError(f"HostChannel: {k} has {t.dim()} dims > {MAX_NDIM}")
            row = [kind, DTYPES.index(t.dtype), t.dim(), *t.shape]
            h[i * _PER_KEY:i * _PER_KEY + len(row)] = torch.tensor(row, dtype=torch.int64)
        h[len(self.keys) * _PER_KEY:] = torch.tensor(list(meta), dtype=torch.int64)
        return h

    def _specs(self, header: torch.Tensor, kind: int) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
        rows = header[:len(self.keys) * _PER_KEY].view(len(self.keys), _PER_KEY).tolist()
        return [(k, DTYPES[r[1]], tuple(r[3:3 + r[2]])) for k, r in zip(self.keys, rows, strict=True) if r[0] == kind]

    def _tag(self, n: int, part: int) -> int:
        return (2 * n + part) % _TAGS

    def send(self, dsts: Sequence[int], tensors: dict[str, torch.Tensor], meta: Sequence[int] = (),
             described: dict[str, torch.Tensor] | None = None) -> None:
        """Queue one message to each global rank in ``dsts`` (encoded once; returns at once)."""
        if len(meta) != self.num_meta:
            raise ValueError(f"HostChannel: {len(meta)} meta ints, the channel carries {self.num_meta}")
        header = self._header(tensors, described or {}, meta)
        parts = []
        for k in self.keys:
            if k in tensors:
                b = tensors[k].detach().contiguous().reshape(-1).view(torch.uint8)
                parts += [b, torch.zeros(_padded(b.numel()) - b.numel(), dtype=torch.uint8)]
        data = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.uint8)  # [bytes]
        works = []
        for dst in dsts:
            n = self._sent.get(dst, 0)
            self._sent[dst] = n + 1
            works.append(dist.isend(header, dst, group=self.group, tag=self._tag(n, 0)))
            if data.numel():
                works.append(dist.isend(data, dst, group=self.group, tag=self._tag(n, 1)))
        self._pending.append((works, (header, data)))

    def recv(self) -> tuple[dict[str, torch.Tensor], dict[str, tuple[torch.dtype, tuple[int, ...]]], list[int]]:
        """The next message from ``src``: (tensors, described key -> (dtype, shape), meta). Blocks until it
        arrives."""
        n, self._received = self._received, self._received + 1
        header = torch.zeros(len(self.keys) * _PER_KEY + self.num_meta, dtype=torch.int64)
        dist.recv(header, self.src, group=self.group, tag=self._tag(n, 0))
        specs = self._specs(header, _DATA)
        sizes = [_padded(torch.Size(shape).numel() * dtype.itemsize) for _, dtype, shape in specs]
        data = torch.empty(sum(sizes), dtype=torch.uint8, pin_memory=self.pin)  # [bytes]
        if data.numel():
            dist.recv(data, self.src, group=self.group, tag=self._tag(n, 1))
        out, offset = {}, 0
        for (k, dtype, shape), size in zip(specs, sizes, strict=True):
            nbytes = torch.Size(shape).numel() * dtype.itemsize
            out[k] = data[offset:offset + nbytes].view(dtype).reshape(shape)
            offset += size
        described = {k: (dtype, shape) for k, dtype, shape in self._specs(header, _SPEC)}
        return out, described, header[len(self.keys) * _PER_KEY:].tolist()

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait for every queued send (each receiver has taken its message), at most ``timeout_s`` each."""
        for works, _ in self._pending:
            for w in works:
                if timeout_s is None:
                    w.wait()
                else:
                    w.wait(timedelta(seconds=timeout_s))
        self._pending.clear()
