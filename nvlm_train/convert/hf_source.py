"""Lazy access to the weights of HF directories under NVLM-D key names, one tensor at a time.

An NVLM-D directory is read as is; an InternViT directory is seen under ``vision_model.`` and a Qwen2
directory under ``language_model.`` (their own keys are ``embeddings.*`` / ``encoder.*`` and
``model.*`` / ``lm_head.*``), so one mapping table serves both starting points. A Qwen2 with tied
embeddings (no ``lm_head.weight``) serves its embedding as the output layer.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from nvlm_train.convert.errors import ConvertError

_ST_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}
LM_HEAD, EMBED = "language_model.lm_head.weight", "language_model.model.embed_tokens.weight"


def safetensors_files(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ConvertError(f"{folder} is not a directory")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise ConvertError(f"{folder}: shards listed in model.safetensors.index.json are missing: {missing}")
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConvertError(f"{folder} holds no safetensors weights (model.safetensors[.index.json]); "
                           "convert .bin checkpoints to safetensors first")
    return files


@dataclass(frozen=True)
class _Entry:
    path: Path
    begin: int  # absolute byte range in the file
    end: int
    dtype: torch.dtype
    shape: tuple[int, ...]


def read_safetensors_header(path: Path) -> dict[str, _Entry]:
    """The tensors a .safetensors file holds, from its header alone (nothing is mapped or loaded)."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            size = path.stat().st_size
            if n > size - 8:
                raise ValueError(f"header length {n} exceeds the file")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        entries = {}
        for key, info in header.items():
            if key == "__metadata__":
                continue
            if info["dtype"] not in _ST_DTYPES:
                raise ValueError(f"{key}: unsupported dtype {info['dtype']}")
            first, last = (int(o) for o in info["data_offsets"])
            if not 0 <= first <= last:
                raise ValueError(f"{key}: bad data_offsets {info['data_offsets']}")
            begin, end = 8 + n + first, 8 + n + last
            dtype, shape = _ST_DTYPES[info["dtype"]], tuple(int(d) for d in info["shape"])
            if end > size or end - begin != math.prod(shape) * dtype.itemsize:
                raise ValueError(f"{key}: data range {info['data_offsets']} does not fit the file or its shape")
            entries[key] = _Entry(path, begin, end, dtype, shape)
        return entries
    except (OSError, ValueError, KeyError, TypeError, AttributeError, struct.error) as exc:
        raise ConvertError(f"cannot read {path}: {exc}") from exc


class HFWeights:
    """``{prefix: folder}`` -> tensors by NVLM-D key (``get``), their shapes (``shape``) and dtypes.

    ``get`` reads one tensor's bytes with plain file reads, not a memory map, so the process holds
    only the tensors in use (a map would keep every page it touched resident until closed).
    """

    def __init__(self, folders: dict[str, Path], tie_lm_head: bool = False):
        self._where: dict[str, _Entry] = {}
        for prefix, folder in folders.items():
            for path in safetensors_files(folder):
                for key, entry in read_safetensors_header(path).items():
                    self._where[prefix + key] = entry
        if tie_lm_head and LM_HEAD not in self._where and EMBED in self._where:
            self._where[LM_HEAD] = self._where[EMBED]

    def keys(self) -> set[str]:
        return set(self._where)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._where[key].shape

    def dtype(self) -> torch.dtype:
        """The dtype most weights have (what the converted checkpoint keeps)."""
        counts: dict[torch.dtype, int] = {}
        for d in (e.dtype for e in self._where.values()):
            counts[d] = counts.get(d, 0) + 1
        return max(counts, key=counts.get) if counts else torch.float32

    def get(self, key: str) -> torch.Tensor:
        if key not in self._where:
            raise ConvertError(f"HF weights have no {key!r}")
        e = self._where[key]
        out = torch.empty(e.end - e.begin, dtype=torch.uint8)
        try:
            with open(e.path, "rb") as f:
                f.seek(e.begin)
                if f.readinto(memoryview(out.numpy())) != out.numel():
                    raise OSError("file ends early")
        except OSError as exc:
            raise ConvertError(f"cannot read {key!r} from {e.path}: {exc}") from exc
        return out.view(e.dtype).reshape(e.shape)


def check_keys(weights: HFWeights, expected: dict[str, tuple[int, ...]], what: str) -> None:
    """Fail naming every missing, unexpected or mis-shaped key (before anything is written)."""
    have = weights.keys()
    problems = []
    missing = sorted(set(expected) - have)
    unexpected = sorted(have - set(expected))
    shaped = sorted(k for k in set(expected) & have if tuple(weights.shape(k)) != tuple(expected[k]))

    def head(keys: list[str]) -> str:
        return ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")

    if missing:
        problems.append(f"missing keys: {head(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {head(unexpected)}")
    if shaped:
        problems.append("mis-shaped keys: " + head(
            [f"{k} has {list(weights.shape(k))}, expected {list(expected[k])}" for k in shaped]))
    if problems:
        raise ConvertError(f"{what} does not match its config.json:\n  " + "\n  ".join(problems))
