"""One forward of this rank's model chunk inside a TP x PP layout, for generation.

Pipeline stages hand hidden states ``[s, b, h]`` to the next stage with plain send/recv (every
stage runs the same step in lock step, one micro-batch, nothing to schedule); the last stage
gathers its vocab-parallel logits over TP. ``broadcast_from_last`` then gives every rank what the
last stage decided (next tokens, or full logits for ``verify``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from nvlm_train.model.nvlm_d import NVLMDModel, check_image_slots


class StageRunner:
    def __init__(self, chunk: NVLMDModel, real_vocab: int):
        self.chunk = chunk
        self.real_vocab = real_vocab
        self.device = next(chunk.parameters()).device
        self.dtype = next(chunk.language_model.parameters()).dtype
        self.hidden = chunk.model_cfg.language.hidden_size
        self.pp = ps.get_pipeline_model_parallel_world_size()
        self.tp = ps.get_tensor_model_parallel_world_size()
        self.first = ps.is_pipeline_first_stage(ignore_virtual=True)
        self.last = ps.is_pipeline_last_stage(ignore_virtual=True)

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, rotary_positions: torch.Tensor,
                mask: torch.Tensor, pixel_values: torch.Tensor | None = None, image_mask: torch.Tensor | None = None,
                inference_context=None, last_token_only: bool = True) -> torch.Tensor | None:
        """tokens/positions [b, s]; rotary_positions [b, sk]; mask [b, 1, s, sk].

        Returns full-vocabulary float logits [b, s or 1, V] on the last stage, None elsewhere.
        """
        b, s = tokens.shape
        dev = self.device
        if not self.first:
            received = torch.empty(s, b, self.hidden, dtype=self.dtype, device=dev)  # [s, b, h]
            dist.recv(received, src=ps.get_pipeline_model_parallel_prev_rank())
            self.chunk.set_input_tensor(received)
        else:
            self.chunk.set_input_tensor(None)
        pixels = pixel_values.to(dev) if (self.first and pixel_values is not None and len(pixel_values)) else None
        if self.first and tokens.device.type == "cpu":  # on the host, before the copy: no device sync
            tiles = 0 if pixels is None else len(pixel_values)
            check_image_slots(tokens, tiles * self.chunk.model_cfg.tokens_per_tile, self.chunk.image_token_id,
                              image_mask)
        out = self.chunk(tokens.to(dev), positions.to(dev), pixel_values=pixels,
                         attention_mask=mask.to(dev), inference_context=inference_context,
                         rotary_position_ids=rotary_positions.to(dev),
                         image_mask=None if image_mask is None else image_mask.to(dev),
                         last_token_only=last_token_only)
        if not self.last:
            dist.send(out.contiguous(), dst=ps.get_pipeline_model_parallel_next_rank())  # [s, b, h]
            return None
        return self._gather_vocab(out)

    def _gather_vocab(self, local: torch.Tensor) -> torch.Tensor:
        local = local.float().contiguous()  # [b, s, V_padded / tp]
        if self.tp > 1:
            parts = [torch.empty_like(local) for _ in range(self.tp)]
            dist.all_gather(parts, local, group=ps.get_tensor_model_parallel_group())
            local = torch.cat(parts, dim=-1)
        return local[..., :self.real_vocab]

    def broadcast_from_last(self, value: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype
                            ) -> torch.Tensor:
        """The last stage's ``value`` on every rank of this pipeline (same TP rank)."""
        if self.pp == 1:
            return value
        buf = value.contiguous() if self.last else torch.empty(shape, dtype=dtype, device=self.device)
        dist.broadcast(buf, src=ps.get_pipeline_model_parallel_last_rank(),
                       group=ps.get_pipeline_model_parallel_group())
        return buf
