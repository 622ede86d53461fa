"""Lazy, memory-mapped access to the weights of HF directories under NVLM-D key names.

An NVLM-D directory is read as is; an InternViT directory is seen under ``vision_model.`` and a Qwen2
directory under ``language_model.`` (their own keys are ``embeddings.*`` / ``encoder.*`` and
``model.*`` / ``lm_head.*``), so one mapping table serves both starting points. A Qwen2 with tied
embeddings (no ``lm_head.weight``) serves its embedding as the output layer.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

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


class HFWeights:
    """``{prefix: folder}`` -> tensors by NVLM-D key (``get``), their shapes (``shape``) and dtypes."""

    def __init__(self, folders: dict[str, Path], tie_lm_head: bool = False):
        self._where: dict[str, tuple[Path, str]] = {}
        self._handles: dict[Path, object] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._dtypes: dict[str, torch.dtype] = {}
        for prefix, folder in folders.items():
            for path in safetensors_files(folder):
                handle = self._open(path)
                for key in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                    name = prefix + key
                    self._where[name] = (path, key)
                    sl = handle.get_slice(key)
                    self._shapes[name] = tuple(sl.get_shape())
                    self._dtypes[name] = _ST_DTYPES.get(sl.get_dtype(), torch.float32)
        if tie_lm_head and LM_HEAD not in self._where and EMBED in self._where:
            self._where[LM_HEAD] = self._where[EMBED]
            self._shapes[LM_HEAD], self._dtypes[LM_HEAD] = self._shapes[EMBED], self._dtypes[EMBED]

    def _open(self, path: Path):
        if path not in self._handles:
            try:
                self._handles[path] = safe_open(str(path), framework="pt")
            except Exception as exc:  # noqa: BLE001 - a broken file is a user error
                raise ConvertError(f"cannot read {path}: {exc}") from exc
        return self._handles[path]

    def keys(self) -> set[str]:
        return set(self._where)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[key]

    def dtype(self) -> torch.dtype:
        """The dtype most weights have (what the converted checkpoint keeps)."""
        counts: dict[torch.dtype, int] = {}
        for d in self._dtypes.values():
            counts[d] = counts.get(d, 0) + 1
        return max(counts, key=counts.get) if counts else torch.float32

    def get(self, key: str) -> torch.Tensor:
        if key not in self._where:
            raise ConvertError(f"HF weights have no {key!r}")
        path, inner = self._where[key]
        return self._open(path).get_tensor(inner)


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
