"""The explicit tensor transforms the mapping tables name, one ``split`` (mcore -> HF) and one ``merge``
(HF -> mcore) per kind. All work on full, unpadded tensors of one layer (megatron's TP1 layout).

Why they exist: megatron fuses and interleaves what HF keeps apart. InternViT's fused qkv is
[all Q; all K; all V] in HF but per head [q_h; k_h; v_h] in megatron; Qwen2's separate q/k/v (and
biases) become one tensor grouped per KV group [q heads of g; k_g; v_g]; SwiGLU gate/up become one
fc1 = [gate; up].
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


def _vit_qkv_split(t: torch.Tensor, d: Dims) -> list[torch.Tensor]:
    h, hd = d.vit_heads, d.vit_head_dim
    rest = t.shape[1:]
    return [t.reshape(h, 3, hd, *rest).transpose(0, 1).reshape(3 * h * hd, *rest)]


def _vit_qkv_merge(ts: list[torch.Tensor], d: Dims) -> torch.Tensor:
    h, hd = d.vit_heads, d.vit_head_dim
    (t,) = ts
    rest = t.shape[1:]
    return t.reshape(3, h, hd, *rest).transpose(0, 1).reshape(3 * h * hd, *rest)


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
    "gqa_qkv": Transform(_gqa_split, _gqa_merge),
    "gate_up": Transform(_gate_up_split, _gate_up_merge),
}
