"""InternViT vision encoder on megatron-core's ``TransformerBlock``."""

from __future__ import annotations

import torch
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_block import TransformerBlock
from megatron.core.transformer.transformer_config import TransformerConfig

from nvlm_train.config.model import VisionConfig
from nvlm_train.model.specs import internvit_layer_spec
from nvlm_train.runtime.compat import no_unknown_mlp_warning
from nvlm_train.vision.tiling import normalize_pixels


class InternViT(MegatronModule):
    """Conv patch embedding + class token + learned positions, then pre-norm layers.

    Returns the last layer's hidden states with the class token dropped (no final norm):
    ``[tiles, patches, C]``. Embedding parameters are replicated over TP.
    """

    def __init__(self, config: TransformerConfig, vision: VisionConfig, impl: str):
        super().__init__(config=config)
        c = vision.hidden_size
        self.num_patches = vision.patches_per_side**2
        self.patch_embedding = torch.nn.Conv2d(
            vision.num_channels, c, kernel_size=vision.patch_size, stride=vision.patch_size, bias=True,
            dtype=config.params_dtype,
        )
        self.class_embedding = torch.nn.Parameter(torch.zeros(1, 1, c, dtype=config.params_dtype))
        self.position_embedding = torch.nn.Parameter(
            torch.zeros(1, 1 + self.num_patches, c, dtype=config.params_dtype)
        )
        with no_unknown_mlp_warning():  # LayerScaledMLP is an MLP; megatron 0.16 warns per layer
            self.decoder = TransformerBlock(
                config=config,
                spec=internvit_layer_spec(impl, vision.num_attention_heads, vision.layerscale_init),
                pre_process=True,
                post_process=False,
            )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # pixel_values: [n, 3, H, W], uint8 from the data pipeline or already-normalised floats
        if pixel_values.dtype == torch.uint8:
            pixel_values = normalize_pixels(pixel_values)  # on the device: the card's exact float32 numbers
        x = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))  # [n, C, h, w]
        x = x.flatten(2).transpose(1, 2)  # [n, h*w, C]
        cls = self.class_embedding.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.position_embedding  # [n, 1+h*w, C]
        x = x.transpose(0, 1).contiguous()  # [s, n, C]
        x = self.decoder(x, attention_mask=None)  # [s, n, C]
        return x[1:].transpose(0, 1)  # [n, h*w, C]
