"""Pixel shuffle (InternVL "v2" ordering) and the ``mlp1`` projector, tensor-parallel."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig


def pixel_shuffle_v2(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """[n, h, w, C] -> [n, h*r, w*r, C/r^2], InternVL's "v2" channel ordering.

    Folds neighbouring patches into channels: first along the width axis, then (after a
    transpose) along the height axis, and transposes back so rows stay rows.
    """
    n, h, w, c = x.shape
    x = x.reshape(n, h, int(w * ratio), int(c / ratio))
    x = x.permute(0, 2, 1, 3)
    x = x.reshape(n, int(w * ratio), int(h * ratio), int(c / (ratio * ratio)))
    return x.permute(0, 2, 1, 3).contiguous()


class Projector(MegatronModule):
    """LayerNorm(C/r^2) -> column-parallel linear -> GELU -> row-parallel linear (no biases)."""

    def __init__(self, config: TransformerConfig, in_size: int, ffn_size: int, out_size: int, eps: float):
        super().__init__(config=config)
        self.layer_norm = torch.nn.LayerNorm(in_size, eps=eps, dtype=config.params_dtype)
        init = lambda w: torch.nn.init.normal_(w, std=config.init_method_std)  # noqa: E731
        self.linear_fc1 = ColumnParallelLinear(
            in_size, ffn_size, config=config, init_method=init, bias=False, gather_output=False,
            skip_bias_add=True,
        )
        self.linear_fc2 = RowParallelLinear(
            ffn_size, out_size, config=config, init_method=init, bias=False, input_is_parallel=True,
            skip_bias_add=True,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [t, C/r^2] (replicated over TP) -> [t, H_llm]
        x = self.layer_norm(x)
        x, _ = self.linear_fc1(x)
        x = F.gelu(x)
        x, _ = self.linear_fc2(x)
        return x
