"""NVLM-D: InternViT -> pixel shuffle + projector -> image embeddings spliced into Qwen2's input.

One instance is one pipeline stage (or one virtual chunk of it). The vision encoder and the
projector exist only where ``pre_process`` is true (the first stage's first chunk); later
stages are plain Qwen2 decoder slices that receive hidden states from the previous stage.
"""

from __future__ import annotations

import torch
from megatron.core.enums import ModelType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig

from nvlm_train.config.model import ModelConfig
from nvlm_train.model.internvit import InternViT
from nvlm_train.model.language import build_qwen2
from nvlm_train.model.loss import token_cross_entropy
from nvlm_train.model.packing import packed_causal_mask
from nvlm_train.model.projector import Projector, pixel_shuffle_v2


class ImageTokenMismatchError(ValueError):
    """The number of image-context tokens does not match the image embeddings provided."""


def splice_image_embeddings(
    text_embeds: torch.Tensor, tokens: torch.Tensor, image_embeds: torch.Tensor, image_token_id: int
) -> torch.Tensor:
    """Put ``image_embeds`` ([t, h], in order) at the image-token positions of ``tokens`` ([b, s]).

    ``text_embeds`` is [s, b, h]; positions are filled row-major over the batch, the order in
    which the data pipeline lays out the tiles.
    """
    is_image = tokens == image_token_id  # [b, s]
    n_slots = int(is_image.sum())
    if n_slots != image_embeds.shape[0]:
        raise ImageTokenMismatchError(
            f"the batch has {n_slots} image-context tokens (id {image_token_id}) but the images "
            f"produce {image_embeds.shape[0]} embeddings; each tile needs exactly tokens_per_tile "
            f"image-context tokens"
        )
    if n_slots == 0:
        return text_embeds
    out = text_embeds.transpose(0, 1).clone()  # [b, s, h]
    out[is_image] = image_embeds.to(out.dtype)
    return out.transpose(0, 1).contiguous()  # [s, b, h]


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
    ):
        super().__init__(config=language_config)
        self.model_type = ModelType.encoder_or_decoder  # read by megatron's schedules
        self.vp_stage = vp_stage
        # Qwen2's output layer is untied; megatron's grad finalisation asks the top module.
        self.share_embeddings_and_output_weights = False
        self.model_cfg = model
        self.pre_process = pre_process
        self.post_process = post_process
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
            language_config, model.language, impl, padded_vocab, pre_process, post_process, vp_stage
        )

    def set_input_tensor(self, input_tensor) -> None:
        self.language_model.set_input_tensor(input_tensor)

    def forward(
        self,
        tokens: torch.Tensor,  # [b, s]
        position_ids: torch.Tensor,  # [b, s]
        labels: torch.Tensor | None = None,  # [b, s]
        pixel_values: torch.Tensor | None = None,  # [tiles, 3, H, W]
        seq_boundaries: torch.Tensor | None = None,  # [b, n+1]
    ) -> torch.Tensor:
        """Last stage: per-token loss [b, s] given ``labels``, else vocab-parallel logits [b, s, V/tp].

        Other stages return hidden states [s, b, h] for the next stage.
        """
        b, s = tokens.shape
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
            decoder_input = splice_image_embeddings(text, tokens, image, self.image_token_id)
        mask = packed_causal_mask(seq_boundaries, b, s, device=tokens.device)
        rope = self.language_model.rotary_pos_emb
        rope.position_ids = position_ids
        try:
            out = self.language_model(
                input_ids=tokens, position_ids=position_ids, attention_mask=mask, decoder_input=decoder_input
            )  # last stage: logits [b, s, V/tp]; otherwise hidden states [s, b, h]
        finally:
            rope.position_ids = None
        if self.post_process and labels is not None:
            return token_cross_entropy(out, labels, self.model_cfg.language.vocab_size)
        return out

    def _project(self, vit_out: torch.Tensor) -> torch.Tensor:
        n, p, c = vit_out.shape
        side = int(round(p**0.5))
        x = pixel_shuffle_v2(vit_out.reshape(n, side, side, c), self.downsample_ratio)
        return self.projector(x.reshape(-1, x.shape[-1]))  # [n * tokens_per_tile, H_llm]
