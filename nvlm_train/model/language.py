"""Qwen2 as a megatron-core ``GPTModel``, with RoPE driven by explicit position ids."""

from __future__ import annotations

import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_config import TransformerConfig

from nvlm_train.config.model import LanguageConfig
from nvlm_train.model.specs import qwen2_layer_spec


class PositionIdRotaryEmbedding(torch.nn.Module):
    """Megatron's ``RotaryEmbedding`` plus frequencies gathered at explicit positions.

    ``GPTModel`` only knows positions ``0..s-1``; NVLM-D's batches carry ``position_ids`` (restarting
    at each packed sample, or shifted by left padding in generation), so ``NVLMDModel`` asks
    ``at_positions`` for one frequency per token: ``[s, b, 1, d]`` instead of ``[s, 1, 1, d]``.
    Calling the module itself is megatron's own behaviour (THD packs restart from ``cu_seqlens``).
    """

    def __init__(self, inner: torch.nn.Module, max_positions: int):
        super().__init__()
        self.inner = inner
        self.max_positions = max_positions

    def get_rotary_seq_len(self, *args, **kwargs):
        return self.inner.get_rotary_seq_len(*args, **kwargs)

    def forward(self, max_seq_len: int, *args, **kwargs) -> torch.Tensor:
        return self.inner(max_seq_len, *args, **kwargs)  # [max_seq_len, 1, 1, d]

    def at_positions(self, position_ids: torch.Tensor) -> torch.Tensor:
        """[b, s] positions -> [s, b, 1, d] frequencies.

        The table covers every position the model accepts (and at least the row's width), so no
        device value (``position_ids.max()``) is read on the host; megatron caches it per length.
        """
        freqs = self.inner(max(self.max_positions, position_ids.shape[-1]))  # [p, 1, 1, d]
        return freqs[:, 0, 0, :][position_ids.t()].unsqueeze(2)  # [s, b, 1, d]


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
    model.rotary_pos_emb = PositionIdRotaryEmbedding(model.rotary_pos_emb, lm.max_position_embeddings)
    return model


def run_language_model(
    lm: GPTModel,
    decoder_input: torch.Tensor | None,  # [s, b, h] on the first stage; None later (set_input_tensor)
    rotary_pos_emb: torch.Tensor,  # [s, b, 1, d] per token, or megatron's [s, 1, 1, d] for THD
    attention_mask: torch.Tensor | None = None,  # [b, 1, sq, sk] bool, True = masked
    packed_seq_params=None,
    inference_context=None,
    last_token_only: bool = False,
) -> torch.Tensor:
    """``GPTModel.forward`` without labels, composed from its parts so the RoPE frequencies are explicit.

    Last stage: vocab-parallel logits [s, b, V/tp] (s = 1 with ``last_token_only``), megatron's
    layout; other stages: hidden states [s, b, h]. The decoder call and the output layer are
    exactly ``GPTModel``'s.
    """
    hidden = lm.decoder(hidden_states=decoder_input, attention_mask=attention_mask,
                        inference_context=inference_context, rotary_pos_emb=rotary_pos_emb,
                        packed_seq_params=packed_seq_params)  # [s, b, h]
    if not lm.post_process:
        return hidden
    if last_token_only:
        hidden = hidden[-1:]  # [1, b, h]
    logits, _ = lm.output_layer(hidden)  # [s, b, V/tp]
    return logits
