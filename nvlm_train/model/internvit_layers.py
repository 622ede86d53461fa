"""The pieces of an InternViT layer that megatron-core does not have.

* ``FullWidthQKRMSNorm``: InternViT normalises q and k with RMSNorm over the FULL hidden width
  (all heads together) before splitting heads. Under tensor parallelism each rank holds only
  some heads, so the sum of squares is all-reduced across the TP group, and divided by the real
  (unpadded) width, so the result does not depend on TP or on zero-padded heads.
* ``LayerScaledSelfAttention`` / ``LayerScaledMLP``: LayerScale (``ls1``/``ls2``) multiplies each
  residual branch; scaling the branch output and its bias before megatron's bias-dropout-add is
  exactly ``residual + ls * (out + bias)``.
* ``NoBiasColumnParallelLinear``: the fused qkv has no bias although proj/fc1/fc2 have one.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel import ColumnParallelLinear
from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes
from megatron.core.transformer.attention import SelfAttention
from megatron.core.transformer.mlp import MLP
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint


class _AllReduceSum(torch.autograd.Function):
    """All-reduce in forward AND backward: every rank's output depends on every rank's input."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def all_reduce_sum_autograd(x: torch.Tensor, group) -> torch.Tensor:
    if group is None or dist.get_world_size(group) == 1:
        return x
    return _AllReduceSum.apply(x, group)


class FullWidthQKRMSNorm(MegatronModule):
    """RMSNorm over all (real) heads of q or k; weight sharded over TP like the heads."""

    def __init__(self, config, hidden_size: int, eps: float = 1e-6, num_real_heads: int | None = None):
        super().__init__(config=config)
        tp = parallel_state.get_tensor_model_parallel_world_size()
        heads_total = config.num_attention_heads  # padded
        self.num_real_heads = num_real_heads or heads_total
        self.heads_local = heads_total // tp
        self.head_dim = hidden_size
        self.eps = eps
        self.real_width = self.num_real_heads * hidden_size
        self.weight = torch.nn.Parameter(
            torch.ones(self.heads_local * hidden_size, dtype=config.params_dtype)
        )
        set_tensor_model_parallel_attributes(self.weight, is_parallel=True, dim=0, stride=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [s, b, heads_local, hn]
        s, b, heads, hn = x.shape
        xf = x.float()
        sumsq = xf.pow(2).sum(dim=(-2, -1), keepdim=True)  # [s, b, 1, 1]
        sumsq = all_reduce_sum_autograd(sumsq, parallel_state.get_tensor_model_parallel_group())
        y = xf * torch.rsqrt(sumsq / self.real_width + self.eps)
        return y.to(x.dtype) * self.weight.view(heads, hn)

    def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
        state_dict = self.state_dict(prefix="", keep_vars=True)
        return make_sharded_tensors_for_checkpoint(state_dict, prefix, {"weight": 0}, sharded_offsets)


class _LayerScale(MegatronModule):
    """A per-channel scale, replicated over TP (checkpointed as a replicated tensor)."""

    def __init__(self, config, init: float):
        super().__init__(config=config)
        self.weight = torch.nn.Parameter(torch.full((config.hidden_size,), init, dtype=config.params_dtype))

    def forward(self, out, bias):
        return out * self.weight, (bias * self.weight if bias is not None else None)


class _LayerScaled:
    """Mixin: scale a megatron branch's (output, bias) by a LayerScale vector."""

    def __init__(self, *args, layerscale_init: float = 0.1, **kwargs):
        super().__init__(*args, **kwargs)
        self.layer_scale = _LayerScale(self.config, layerscale_init)

    def forward(self, *args, **kwargs):
        out, bias = super().forward(*args, **kwargs)
        return self.layer_scale(out, bias)


class LayerScaledSelfAttention(_LayerScaled, SelfAttention):
    """InternViT attention branch (``ls1``)."""


class LayerScaledMLP(_LayerScaled, MLP):
    """InternViT MLP branch (``ls2``)."""


class NoBiasColumnParallelLinear(ColumnParallelLinear):
    def __init__(self, *args, bias: bool = False, **kwargs):
        super().__init__(*args, bias=False, **kwargs)
