"""NVLM-D: InternViT -> pixel shuffle + projector -> image embeddings spliced into Qwen2's input.

One instance is one pipeline stage (or one virtual chunk of it). The vision encoder and the
projector exist only where ``pre_process`` is true (the first stage's first chunk); later
stages are plain Qwen2 decoder slices that receive hidden states from the previous stage.

Packed rows reach the LLM as THD (``nvlm_train.model.packing``): the micro-batch runs as one
``[b * s, 1, h]`` pack with ``PackedSeqParams``; stages still exchange ``[s, b, h]`` (the shape
megatron's schedules allocate), converted at each stage's edges.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from megatron.core.enums import ModelType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig

from nvlm_train.config.model import ModelConfig
from nvlm_train.model.internvit import InternViT
from nvlm_train.model.language import build_qwen2, run_language_model
from nvlm_train.model.loss import token_cross_entropy
from nvlm_train.model.packing import (
    PackedRows,
    check_positions,
    one_full_sample_per_row,
    packed_rows,
    sample_lengths,
)
from nvlm_train.model.projector import Projector, pixel_shuffle_v2


class ImageTokenMismatchError(ValueError):
    """The number of image-context tokens does not match the image embeddings provided."""


def _image_slots(tokens: torch.Tensor, image_token_id: int, image_mask: torch.Tensor | None) -> torch.Tensor:
    """[b, s] bool: the slots the image embeddings fill (``image_mask`` narrows them to the prompt's)."""
    is_image = tokens == image_token_id
    return is_image & image_mask if image_mask is not None else is_image


def check_image_slots(tokens: torch.Tensor, num_embeds: int, image_token_id: int,
                      image_mask: torch.Tensor | None = None) -> None:
    """The image-context tokens of ``tokens`` ([b, s], on the host) are exactly ``num_embeds``."""
    n_slots = int(_image_slots(tokens, image_token_id, image_mask).sum())
    if n_slots != num_embeds:
        raise ImageTokenMismatchError(
            f"the batch has {n_slots} image-context tokens (id {image_token_id}) but the images "
            f"produce {num_embeds} embeddings; each tile needs exactly tokens_per_tile "
            f"image-context tokens"
        )


def splice_image_embeddings(
    text_embeds: torch.Tensor, tokens: torch.Tensor, image_embeds: torch.Tensor, image_token_id: int,
    image_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Put ``image_embeds`` ([t, h], in order) at the image-token positions of ``tokens`` ([b, s]).

    ``text_embeds`` is [s, b, h]; positions are filled row-major over the batch, the order in
    which the data pipeline lays out the tiles. ``image_mask`` ([b, s] bool) narrows the slots to
    the prompt's (generation: an image-context token the model generates is text, as in HF).
    The slot count is checked where ``tokens`` is a host tensor (the trainer checks its batches
    before the copy, ``check_image_slots``): on a GPU that count would be a device-to-host sync.
    """
    if tokens.device.type == "cpu":
        check_image_slots(tokens, image_embeds.shape[0], image_token_id, image_mask)
    if image_embeds.shape[0] == 0:
        return text_embeds
    is_image = _image_slots(tokens, image_token_id, image_mask)  # [b, s]
    out = text_embeds.transpose(0, 1)  # [b, s, h]
    out = out.masked_scatter(is_image.unsqueeze(-1), image_embeds.to(out.dtype))  # row-major, no host read
    return out.transpose(0, 1).contiguous()  # [s, b, h]


def to_pack(x: torch.Tensor) -> torch.Tensor:
    """[s, b, h] -> [b * s, 1, h], rows one after another (THD's token order)."""
    s, b, h = x.shape
    return x if b == 1 else x.transpose(0, 1).reshape(b * s, 1, h)


def from_pack(x: torch.Tensor, b: int, s: int) -> torch.Tensor:
    """[b * s, 1, h] -> [s, b, h]."""
    return x if b == 1 else x.reshape(b, s, -1).transpose(0, 1).contiguous()


@contextlib.contextmanager
def _unfused_rope_for_per_token_positions(config: TransformerConfig, per_token: bool) -> Iterator[None]:
    """Per-token frequencies ([s, b, 1, d]: generation, one-sample rows) cannot go through TE's fused
    BSHD RoPE, which takes one row of frequencies for the batch; such forwards (without gradients:
    a recomputed backward would read the flag again) run megatron's unfused RoPE. The flag lives on the
    ``TransformerConfig`` every chunk of this rank shares: it is flipped for one forward, on one thread."""
    if not (per_token and config.apply_rope_fusion):
        yield
        return
    if torch.is_grad_enabled():
        raise RuntimeError("model.fusion.rope is on, but this training forward has per-token positions (rows that "
                           "are not packed as THD); set model.fusion.rope=false")
    config.apply_rope_fusion = False
    try:
        yield
    finally:
        config.apply_rope_fusion = True


class NVLMDModel(MegatronModule):
    def __init__(
        self,
        model: ModelConfig,
        vision_config: TransformerConfig | None,
        language_config: TransformerConfig,
        impl: str,
        padded_vocab: int,
        pre_process: bool,
        post_process: bool,
        vp_stage: int | None = None,
        llm_thd: bool = True,
    ):
        super().__init__(config=language_config)
        self.model_type = ModelType.encoder_or_decoder  # read by megatron's schedules
        self.vp_stage = vp_stage
        # Qwen2's output layer is untied; megatron's grad finalisation asks the top module.
        self.share_embeddings_and_output_weights = False
        self.model_cfg = model
        self.pre_process = pre_process
        self.post_process = post_process
        self.impl = impl
        self.llm_thd = llm_thd
        self._stage_input: torch.Tensor | None = None
        self.image_token_id = model.language.image_token_id
        self.downsample_ratio = model.projector.downsample_ratio
        self.vision_model: InternViT | None = None
        self.projector: Projector | None = None
        if pre_process:
            assert vision_config is not None
            ratio = model.projector.downsample_ratio
            self.vision_model = InternViT(vision_config, model.vision, impl)
            self.projector = Projector(
                vision_config,
                in_size=int(model.vision.hidden_size / (ratio * ratio)),
                ffn_size=model.projector.ffn_hidden_size,
                out_size=model.language.hidden_size,
                eps=model.projector.layernorm_eps,
            )
        self.language_model = build_qwen2(
            language_config, model.language, impl, padded_vocab, pre_process, post_process, vp_stage,
            thd=llm_thd,
        )

    def set_input_tensor(self, input_tensor) -> None:
        """Called by megatron's schedules with the previous stage's [s, b, h] (handed on in ``forward``)."""
        self._stage_input = input_tensor[0] if isinstance(input_tensor, list) else input_tensor

    def packed_params(self, tokens: torch.Tensor, position_ids: torch.Tensor, seq_boundaries: torch.Tensor | None,
                      num_samples: torch.Tensor | None) -> PackedRows | None:
        """THD parameters for this micro-batch, or None where plain causal attention is exact."""
        b, s = tokens.shape
        if not self.llm_thd:  # Transformer Engine without THD: only one sample per row is safe
            rows = [] if seq_boundaries is None else sample_lengths(seq_boundaries.cpu(), num_samples)
            if any(len(x) > 1 for x in rows):
                raise RuntimeError(
                    "this batch packs several samples into a row, but the model was built for "
                    "Transformer Engine without THD support (data.packing=false); they would attend to "
                    "each other. Use model.impl=torch or set data.packing=false in the data pipeline"
                )
            return None
        if self.impl == "torch" and one_full_sample_per_row(seq_boundaries, num_samples, s):
            return None  # SDPA is_causal over whole rows: its flash kernel, nothing to skip
        if seq_boundaries is not None and position_ids.device.type == "cpu":
            check_positions(position_ids, seq_boundaries.to(position_ids.device))
        return packed_rows(seq_boundaries, num_samples, b, s, device=tokens.device)

    def forward(
        self,
        tokens: torch.Tensor,  # [b, s]
        position_ids: torch.Tensor,  # [b, s]
        labels: torch.Tensor | None = None,  # [b, s]
        pixel_values: torch.Tensor | None = None,  # [tiles, 3, H, W]
        seq_boundaries: torch.Tensor | None = None,  # [b, n+1]
        num_samples: torch.Tensor | None = None,  # [b]; without it trailing padding counts as a sample
        *,
        attention_mask: torch.Tensor | None = None,  # [b, 1, sq, sk] bool, True = masked (generation)
        inference_context=None,  # megatron StaticInferenceContext: the KV cache (generation)
        rotary_position_ids: torch.Tensor | None = None,  # [b, sk]: positions of every cached slot
        image_mask: torch.Tensor | None = None,  # [b, s] bool: image-context slots to fill
        last_token_only: bool = False,
    ) -> torch.Tensor:
        """Last stage: per-token loss [b, s] given ``labels``, else vocab-parallel logits [b, s, V/tp].

        Other stages return hidden states [s, b, h] for the next stage. Generation passes an explicit
        ``attention_mask`` (left padding) and, with a KV cache, ``rotary_position_ids`` for every slot
        up to the current one (megatron slices queries at the cache offset and keys from 0).
        """
        b, s = tokens.shape
        generating = attention_mask is not None or inference_context is not None
        packed = None if generating else self.packed_params(tokens, position_ids, seq_boundaries, num_samples)
        decoder_input = None
        if self.pre_process:
            text = self.language_model.embedding(input_ids=tokens, position_ids=position_ids)  # [s, b, h]
            if pixel_values is not None and pixel_values.shape[0] > 0:
                frozen = not any(p.requires_grad for p in self.vision_model.parameters())
                with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
                    vit_out = self.vision_model(pixel_values)
                image = self._project(vit_out)
            else:
                image = text.new_zeros(0, text.shape[-1])
            decoder_input = splice_image_embeddings(text, tokens, image, self.image_token_id,
                                                    image_mask)  # [s, b, h]
            if packed is not None:
                decoder_input = to_pack(decoder_input)  # [b * s, 1, h]
        stage_input = self._stage_input
        if packed is not None and stage_input is not None:
            stage_input = to_pack(stage_input)
        self.language_model.set_input_tensor(stage_input)
        rope = self.language_model.rotary_pos_emb
        if packed is not None:  # THD: megatron's frequencies, restarted at every cu_seqlens offset
            rotary = rope(rope.get_rotary_seq_len(None, self.language_model.decoder, decoder_input,
                                                  self.config, packed), packed_seq=True)
        else:
            rotary = rope.at_positions(position_ids if rotary_position_ids is None else rotary_position_ids)
        with _unfused_rope_for_per_token_positions(self.config, per_token=packed is None):
            out = run_language_model(
                self.language_model, decoder_input, rotary, attention_mask=attention_mask, packed_seq_params=packed,
                inference_context=inference_context, last_token_only=last_token_only,
            )  # last stage: logits [s, b, V/tp] ([b * s, 1, V/tp] packed); otherwise [s, b, h] ([b * s, 1, h])
        if not self.post_process:
            return from_pack(out, b, s) if packed is not None else out  # [s, b, h]
        if labels is not None:  # the loss in the logits' own layout: no transposed copy of them
            target = labels.reshape(b * s, 1) if packed is not None else labels.t().contiguous()  # [s', b']
            loss = token_cross_entropy(out, target, self.model_cfg.language.vocab_size,
                                       fused=self.config.cross_entropy_loss_fusion)
            return loss.reshape(b, s) if packed is not None else loss.t()  # [b, s]
        return out.reshape(b, s, -1) if packed is not None else out.transpose(0, 1).contiguous()  # [b, s, V/tp]

    def _project(self, vit_out: torch.Tensor) -> torch.Tensor:
        n, p, c = vit_out.shape
        side = int(round(p**0.5))
        x = pixel_shuffle_v2(vit_out.reshape(n, side, side, c), self.downsample_ratio)
        return self.projector(x.reshape(-1, x.shape[-1]))  # [n * tokens_per_tile, H_llm]
