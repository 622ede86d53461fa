"""Qwen2 as a megatron-core ``GPTModel``, with RoPE driven by explicit position ids."""

from __future__ import annotations

import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_config import TransformerConfig

from nvlm_train.config.model import LanguageConfig
from nvlm_train.model.specs import qwen2_layer_spec


class PositionIdRotaryEmbedding(torch.nn.Module):
    """Wraps megatron's ``RotaryEmbedding`` so packed rows get positions restarting per sample.

    ``GPTModel`` asks its rotary module for positions ``0..s-1``; NVLM-D's batches carry
    ``position_ids`` (restarting at each packed sample), so the caller sets them with
    ``position_ids`` for the duration of a forward and the frequencies are gathered per
    token: ``[s, b, 1, d]`` instead of ``[s, 1, 1, d]``. THD (packed) forwards leave it unset:
    megatron-core then restarts the positions at every ``cu_seqlens_q_padded`` offset itself.
    """

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        self.position_ids: torch.Tensor | None = None

    def get_rotary_seq_len(self, *args, **kwargs):
        return self.inner.get_rotary_seq_len(*args, **kwargs)

    def forward(self, max_seq_len: int, *args, **kwargs) -> torch.Tensor:
        if self.position_ids is None:
            return self.inner(max_seq_len, *args, **kwargs)
        pos = self.position_ids  # [b, s]
        freqs = self.inner(int(pos.max().item()) + 1, *args, **kwargs)  # [p, 1, 1, d]
        return freqs[:, 0, 0, :][pos.t()].unsqueeze(2)  # [s, b, 1, d]


def build_qwen2(
    config: TransformerConfig,
    lm: LanguageConfig,
    impl: str,
    padded_vocab: int,
    pre_process: bool,
    post_process: bool,
    vp_stage: int | None = None,
    thd: bool = False,
) -> GPTModel:
    model = GPTModel(
        config=config,
        transformer_layer_spec=qwen2_layer_spec(impl, thd),
        vocab_size=padded_vocab,
        max_sequence_length=lm.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=False,
        position_embedding_type="rope",
        rotary_base=lm.rotary_base,
        parallel_output=True,
        vp_stage=vp_stage,
    )
    model.rotary_pos_emb = PositionIdRotaryEmbedding(model.rotary_pos_emb)
    return model
