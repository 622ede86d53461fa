"""InternViT (InternViT-6B-448px-V1-5 architecture) for HF NVLM-D exports (standalone, copied flat).

Parameter names match the published checkpoints:
``embeddings.{class_embedding, patch_embedding, position_embedding}``,
``encoder.layers.N.{attn.qkv, attn.q_norm, attn.k_norm, attn.proj, mlp.fc1, mlp.fc2, norm1, norm2,
ls1, ls2}``.
Attention runs through ``torch.nn.functional.scaled_dot_product_attention``; ``use_flash_attn`` is accepted
for config compatibility and otherwise ignored.
"""

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling
from transformers.modeling_utils import PreTrainedModel

from .configuration_intern_vit import InternVisionConfig


class InternRMSNorm(nn.Module):
    """RMSNorm; with ``variance_width`` the mean square is taken over the first ``variance_width``
    channels only (the real heads of a q/k with dummy heads), and all channels are scaled."""

    def __init__(self, hidden_size, eps=1e-6, variance_width=None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps
        self.variance_width = variance_width

    def forward(self, hidden_states):
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        real = hidden_states if self.variance_width is None else hidden_states[..., : self.variance_width]
        variance = real.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


NORM2FN = {"rms_norm": InternRMSNorm, "layer_norm": nn.LayerNorm}


class InternVisionEmbeddings(nn.Module):
    def __init__(self, config: InternVisionConfig):
        super().__init__()
        self.embed_dim = config.hidden_size
        self.image_size = config.image_size
        self.patch_size = config.patch_size
        self.class_embedding = nn.Parameter(torch.empty(1, 1, self.embed_dim))
        self.patch_embedding = nn.Conv2d(
            config.num_channels, self.embed_dim, kernel_size=self.patch_size, stride=self.patch_size
        )
        self.num_patches = (self.image_size // self.patch_size) ** 2
        self.num_positions = self.num_patches + 1
        self.position_embedding = nn.Parameter(torch.empty(1, self.num_positions, self.embed_dim))

    def _patch_position_embedding(self, grid_h, grid_w, dtype):
        pos = self.position_embedding[:, 1:]
        side = self.image_size // self.patch_size
        if grid_h == side and grid_w == side:
            return pos.to(dtype)
        # Other resolutions: bicubic resize of the learned grid (as InternViT does).
        pos = pos.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
        pos = F.interpolate(pos, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        return pos.reshape(1, -1, grid_h * grid_w).permute(0, 2, 1).to(dtype)

    def forward(self, pixel_values):
        target_dtype = self.patch_embedding.weight.dtype
        patch_embeds = self.patch_embedding(pixel_values.to(target_dtype))  # [b, C, gh, gw]
        batch, _, grid_h, grid_w = patch_embeds.shape
        patch_embeds = patch_embeds.flatten(2).transpose(1, 2)
        class_embeds = self.class_embedding.expand(batch, 1, -1).to(target_dtype)
        embeddings = torch.cat([class_embeds, patch_embeds], dim=1)
        position_embedding = torch.cat(
            [
                self.position_embedding[:, :1].to(target_dtype),
                self._patch_position_embedding(grid_h, grid_w, target_dtype),
            ],
            dim=1,
        )
        return embeddings + position_embedding


class InternAttention(nn.Module):
    """InternViT attention. The weights may carry ``num_dummy_heads`` all-zero heads after the real
    ones (the released NVLM-D layout): they are computed like the others and contribute nothing, since
    their q, k, v are zero and ``proj`` has zero columns for them; q/k RMSNorm averages over the real
    channels only, so the result equals the plain InternViT's."""

    def __init__(self, config: InternVisionConfig):
        super().__init__()
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        if self.head_dim * self.num_heads != self.embed_dim:
            raise ValueError(
                f"hidden_size ({self.embed_dim}) must be divisible by num_attention_heads ({self.num_heads})"
            )
        self.num_stored_heads = self.num_heads + getattr(config, "num_dummy_heads", 0)
        self.stored_dim = self.num_stored_heads * self.head_dim
        self.attention_dropout = config.attention_dropout
        self.qkv = nn.Linear(self.embed_dim, 3 * self.stored_dim, bias=config.qkv_bias)
        self.qk_normalization = config.qk_normalization
        if self.qk_normalization:
            # Normalises over the FULL (real) width, before the split into heads.
            eps = config.layer_norm_eps
            self.q_norm = InternRMSNorm(self.stored_dim, eps=eps, variance_width=self.embed_dim)
            self.k_norm = InternRMSNorm(self.stored_dim, eps=eps, variance_width=self.embed_dim)
        self.proj_drop = nn.Dropout(config.dropout)
        self.proj = nn.Linear(self.stored_dim, self.embed_dim)

    @torch.no_grad()
    def zero_dummy_heads_(self):
        """Zero the dummy heads' weights (their qkv rows, q/k norm entries and proj columns)."""
        real = self.num_heads * self.head_dim
        for block in self.qkv.weight.view(3, self.stored_dim, -1):
            block[real:].zero_()
        if self.qkv.bias is not None:
            self.qkv.bias.view(3, self.stored_dim)[:, real:].zero_()
        if self.qk_normalization:
            self.q_norm.weight[real:].zero_()
            self.k_norm.weight[real:].zero_()
        self.proj.weight[:, real:].zero_()

    def forward(self, hidden_states):
        batch, seq, _ = hidden_states.shape
        # Rows of qkv.weight: [all Q heads; all K heads; all V heads], each head-major, dummy heads last.
        q, k, v = self.qkv(hidden_states).split(self.stored_dim, dim=-1)  # [b, s, D] each
        if self.qk_normalization:
            q = self.q_norm(q)
            k = self.k_norm(k)
        heads = (t.reshape(batch, seq, self.num_stored_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(
            *heads, dropout_p=self.attention_dropout if self.training else 0.0
        )  # [b, heads, s, hd]
        out = out.transpose(1, 2).reshape(batch, seq, self.stored_dim)
        return self.proj_drop(self.proj(out))


class InternMLP(nn.Module):
    def __init__(self, config: InternVisionConfig):
        super().__init__()
        self.act = ACT2FN[config.hidden_act]
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states):
        return self.fc2(self.act(self.fc1(hidden_states)))


class InternVisionEncoderLayer(nn.Module):
    def __init__(self, config: InternVisionConfig):
        super().__init__()
        width = config.hidden_size
        self.attn = InternAttention(config)
        self.mlp = InternMLP(config)
        self.norm1 = NORM2FN[config.norm_type](width, eps=config.layer_norm_eps)
        self.norm2 = NORM2FN[config.norm_type](width, eps=config.layer_norm_eps)
        self.ls1 = nn.Parameter(config.initializer_factor * torch.ones(width))
        self.ls2 = nn.Parameter(config.initializer_factor * torch.ones(width))

    def forward(self, hidden_states):
        dtype = hidden_states.dtype
        hidden_states = hidden_states + self.attn(self.norm1(hidden_states).to(dtype)) * self.ls1
        hidden_states = hidden_states + self.mlp(self.norm2(hidden_states).to(dtype)) * self.ls2
        return hidden_states


class InternVisionEncoder(nn.Module):
    def __init__(self, config: InternVisionConfig):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(
            [InternVisionEncoderLayer(config) for _ in range(config.num_hidden_layers)]
        )
        self.gradient_checkpointing = False

    def forward(self, inputs_embeds, output_hidden_states=False):
        all_hidden = (inputs_embeds,) if output_hidden_states else None
        hidden_states = inputs_embeds
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                hidden_states = torch.utils.checkpoint.checkpoint(layer, hidden_states, use_reentrant=False)
            else:
                hidden_states = layer(hidden_states)
            if output_hidden_states:
                all_hidden = all_hidden + (hidden_states,)
        return BaseModelOutput(last_hidden_state=hidden_states, hidden_states=all_hidden)


class InternVisionModel(PreTrainedModel):
    config_class = InternVisionConfig
    main_input_name = "pixel_values"
    _no_split_modules = ["InternVisionEncoderLayer"]
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(self, config: InternVisionConfig):
        super().__init__(config)
        self.config = config
        self.embeddings = InternVisionEmbeddings(config)
        self.encoder = InternVisionEncoder(config)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, InternRMSNorm):
            nn.init.ones_(module.weight)
        elif isinstance(module, InternVisionEmbeddings):
            nn.init.trunc_normal_(module.class_embedding, std=std)
            nn.init.trunc_normal_(module.position_embedding, std=std)
        elif isinstance(module, InternAttention):
            module.zero_dummy_heads_()
        elif isinstance(module, InternVisionEncoderLayer):
            nn.init.constant_(module.ls1, self.config.initializer_factor)
            nn.init.constant_(module.ls2, self.config.initializer_factor)

    def get_input_embeddings(self):
        return self.embeddings.patch_embedding

    def forward(self, pixel_values=None, output_hidden_states=None, return_dict=None, pixel_embeds=None):
        """Last layer's hidden states ``[b, 1 + patches, C]`` (class token first, no final norm)."""
        output_hidden_states = bool(output_hidden_states)
        return_dict = True if return_dict is None else return_dict
        if pixel_embeds is not None:
            hidden_states = pixel_embeds
        elif pixel_values is not None:
            if pixel_values.dim() != 4:
                shape = tuple(pixel_values.shape)
                raise ValueError(f"pixel_values must be [tiles, 3, H, W], got shape {shape}")
            hidden_states = self.embeddings(pixel_values)
        else:
            raise ValueError("InternVisionModel.forward needs pixel_values or pixel_embeds")
        encoder_outputs = self.encoder(hidden_states, output_hidden_states=output_hidden_states)
        last_hidden_state = encoder_outputs.last_hidden_state
        pooled_output = last_hidden_state[:, 0, :]
        if not return_dict:
            out = (last_hidden_state, pooled_output)
            return out + ((encoder_outputs.hidden_states,) if output_hidden_states else ())
        return BaseModelOutputWithPooling(
            last_hidden_state=last_hidden_state,
            pooler_output=pooled_output,
            hidden_states=encoder_outputs.hidden_states,
        )
