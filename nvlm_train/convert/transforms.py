"""The explicit tensor transforms the mapping tables name, one ``split`` (mcore -> HF) and one ``merge``
(HF -> mcore) per kind. All work on full, unpadded tensors of one layer (megatron's TP1 layout).

Why they exist: megatron fuses and interleaves what HF keeps apart. InternViT's fused qkv is
[all Q; all K; all V] in HF but per head [q_h; k_h; v_h] in megatron; Qwen2's separate q/k/v (and
biases) become one tensor grouped per KV group [q heads of g; k_g; v_g]; SwiGLU gate/up become one
fc1 = [gate; up]. The released NVLM-D files also carry ``vit_dummy_heads`` all-zero ViT heads after the
real ones (qkv rows, q/k norm entries, proj columns): splits append them as zeros, merges check that
they are zero (``DummyHeadError`` otherwise) and drop them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Dims:
    """The head counts the reorders need (from the model config)."""

    vit_heads: int
    vit_head_dim: int
    llm_heads: int
    llm_groups: int
    llm_head_dim: int
    vit_dummy_heads: int = 0  # all-zero heads the HF side stores after the real ones


class DummyHeadError(ValueError):
    """A tensor's dummy-head part is not all zero: it is not the released layout, and dropping it would
    change the model."""


def _check_zero(part: torch.Tensor, what: str) -> None:
    if part.numel() and bool(part.ne(0).any()):
        raise DummyHeadError(f"its dummy-head {what} are not all zero (max |value| {part.abs().max().item():.3g})")


def _vit_qkv_split(t: torch.Tensor, d: Dims) -> list[torch.Tensor]:
    h, hd, dummy = d.vit_heads, d.vit_head_dim, d.vit_dummy_heads
    rest = t.shape[1:]
    blocks = t.reshape(h, 3, hd, *rest).transpose(0, 1)  # [3, h, hd, ...]: Q, K, V blocks
    blocks = torch.cat([blocks, blocks.new_zeros(3, dummy, hd, *rest)], dim=1)
    return [blocks.reshape(3 * (h + dummy) * hd, *rest)]


def _vit_qkv_merge(ts: list[torch.Tensor], d: Dims) -> torch.Tensor:
    h, hd, dummy = d.vit_heads, d.vit_head_dim, d.vit_dummy_heads
    (t,) = ts
    rest = t.shape[1:]
    blocks = t.reshape(3, h + dummy, hd, *rest)
    _check_zero(blocks[:, h:], "rows")
    return blocks[:, :h].transpose(0, 1).reshape(3 * h * hd, *rest)


def _vit_heads_split(t: torch.Tensor, d: Dims) -> list[torch.Tensor]:
    """q/k norm weights [h * hd]: zero entries for the dummy heads."""
    return [torch.cat([t, t.new_zeros(d.vit_dummy_heads * d.vit_head_dim)])]


def _vit_heads_merge(ts: list[torch.Tensor], d: Dims) -> torch.Tensor:
    # The dummy entries scale channels that are always zero, so whatever they hold is dropped.
    return ts[0][: d.vit_heads * d.vit_head_dim]


def _vit_proj_split(t: torch.Tensor, d: Dims) -> list[torch.Tensor]:
    """proj.weight [C, h * hd]: zero input columns for the dummy heads."""
    return [torch.cat([t, t.new_zeros(t.shape[0], d.vit_dummy_heads * d.vit_head_dim)], dim=1)]


def _vit_proj_merge(ts: list[torch.Tensor], d: Dims) -> torch.Tensor:
    (t,) = ts
    real = d.vit_heads * d.vit_head_dim
    _check_zero(t[:, real:], "columns")
    return t[:, :real]


def _gqa_split(t: torch.Tensor, d: Dims) -> list[torch.Tensor]:
    g, q, hd = d.llm_groups, d.llm_heads // d.llm_groups, d.llm_head_dim
    rest = t.shape[1:]
    grouped = t.reshape(g, q + 2, hd, *rest)
    return [
        grouped[:, :q].reshape(g * q * hd, *rest),
        grouped[:, q].reshape(g * hd, *rest),
        grouped[:, q + 1].reshape(g * hd, *rest),
    ]


def _gqa_merge(ts: list[torch.Tensor], d: Dims) -> torch.Tensor:
    g, q, hd = d.llm_groups, d.llm_heads // d.llm_groups, d.llm_head_dim
    qt, kt, vt = ts
    rest = qt.shape[1:]
    grouped = torch.cat(
        [qt.reshape(g, q, hd, *rest), kt.reshape(g, 1, hd, *rest), vt.reshape(g, 1, hd, *rest)], dim=1
    )
    return grouped.reshape(g * (q + 2) * hd, *rest)


def _gate_up_split(t: torch.Tensor, d: Dims) -> list[torch.Tensor]:
    return list(t.chunk(2, dim=0))


def _gate_up_merge(ts: list[torch.Tensor], d: Dims) -> torch.Tensor:
    return torch.cat(ts, dim=0)


@dataclass(frozen=True)
class Transform:
    split: Callable[[torch.Tensor, Dims], list[torch.Tensor]]
    merge: Callable[[list[torch.Tensor], Dims], torch.Tensor]


TRANSFORMS: dict[str, Transform] = {
    "copy": Transform(lambda t, d: [t], lambda ts, d: ts[0]),
    "vit_qkv": Transform(_vit_qkv_split, _vit_qkv_merge),
    "vit_heads": Transform(_vit_heads_split, _vit_heads_merge),
    "vit_proj": Transform(_vit_proj_split, _vit_proj_merge),
    "gqa_qkv": Transform(_gqa_split, _gqa_merge),
    "gate_up": Transform(_gate_up_split, _gate_up_merge),
}
