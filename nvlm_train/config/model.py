"""Typed model configuration: vision encoder, projector, language model and their assembly.

These dataclasses are the only model description code below the entry point sees; they are
registered in Hydra's ConfigStore (``nvlm_train.config.store``) and mapped onto megatron-core
``TransformerConfig``s by ``nvlm_train.model.transformer_config``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from nvlm_train.config.choices import Impl, Recompute, RopeScaling, check_choice
from nvlm_train.config.errors import ConfigError

# Fields that describe how the model is served, not its weights: a checkpoint loads whatever they say.
NON_ARCHITECTURE_FIELDS = ("image_token_id", "rope_scaling_type", "rope_scaling_factor")


@dataclass
class VisionConfig:
    """InternViT. Defaults: InternViT-6B-448px-V1-5 as used by NVLM-D-72B."""

    num_layers: int = 45
    hidden_size: int = 3200
    num_attention_heads: int = 25
    ffn_hidden_size: int = 12800
    image_size: int = 448
    patch_size: int = 14
    num_channels: int = 3
    norm_eps: float = 1e-6
    layerscale_init: float = 0.1
    # Heads are zero-padded up to a multiple of lcm(TP, pad_heads_to_multiple_of) so any TP
    # size works. Fixing a multiple (e.g. 8) keeps checkpoint shapes equal across TP 1/2/4/8.
    pad_heads_to_multiple_of: int = 1

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    def validate(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"model.vision.hidden_size={self.hidden_size} is not divisible by "
                f"model.vision.num_attention_heads={self.num_attention_heads}"
            )
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"model.vision.image_size={self.image_size} is not a multiple of "
                f"model.vision.patch_size={self.patch_size}"
            )


@dataclass
class ProjectorConfig:
    """Pixel shuffle (InternVL "v2" ordering) + LayerNorm + 2-layer GELU MLP (``mlp1``)."""

    downsample_ratio: float = 0.5
    ffn_hidden_size: int = 29568
    layernorm_eps: float = 1e-5


@dataclass
class LanguageConfig:
    """Qwen2 decoder. Defaults: Qwen2-72B-Instruct."""

    num_layers: int = 80
    hidden_size: int = 8192
    num_attention_heads: int = 64
    num_query_groups: int = 8
    ffn_hidden_size: int = 29568
    vocab_size: int = 152064
    rotary_base: float = 1_000_000.0
    norm_eps: float = 1e-6
    max_position_embeddings: int = 32768
    # Id of the image-context token (`<|vision_pad|>` in the Qwen2.5 tokenizer).
    image_token_id: int = 151654
    # megatron pads the vocabulary; padding to a multiple of this (and of TP) keeps the padded
    # size, hence checkpoint shapes, the same at TP 1/2/4/8. Conversions strip the padding.
    vocab_pad_multiple: int = 1024
    # HF ``rope_scaling``, carried from an import to the export. Only "dynamic" (NTK) is accepted: it
    # changes nothing up to max_position_embeddings, which bounds train.seq_length. None: no scaling.
    rope_scaling_type: RopeScaling | None = None
    rope_scaling_factor: float = 1.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"model.language.hidden_size={self.hidden_size} is not divisible by "
                f"model.language.num_attention_heads={self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_query_groups:
            raise ConfigError(
                f"model.language.num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"model.language.num_query_groups={self.num_query_groups}"
            )
        self.rope_scaling_type = check_choice(RopeScaling, self.rope_scaling_type, "model.language.rope_scaling_type",
                                              optional=True)
        if not 0 <= self.image_token_id < self.vocab_size:
            raise ConfigError(
                f"model.language.image_token_id={self.image_token_id} is outside the vocabulary "
                f"(vocab_size={self.vocab_size})"
            )


@dataclass
class FreezeConfig:
    """Frozen modules get no gradients and no optimizer state."""

    vision: bool = False
    projector: bool = False
    language: bool = False


@dataclass
class RecomputeConfig:
    """Activation recomputation per tower: null (off), "full" or "selective"."""

    vision: Recompute | None = None
    language: Recompute | None = None
    num_layers: int = 1  # layers per recompute chunk for "full" (megatron's uniform method)

    def validate(self) -> None:
        for name in ("vision", "language"):
            setattr(self, name, check_choice(Recompute, getattr(self, name), f"model.recompute.{name}", optional=True))


@dataclass
class FusionConfig:
    """megatron-core's fused kernels, one switch each (how the model runs, not its weights).

    null: on where this run's path has the kernel (``nvlm_train.model.fusions`` says where);
    true: required, with an error naming what is missing; false: the unfused path.
    """

    bias_activation: bool | None = None  # the LLM's SwiGLU as one jit-fused op (the ViT's GELU stays exact)
    bias_dropout_add: bool | None = None  # each residual's bias + dropout + add
    rope: bool | None = None  # Transformer Engine's fused RoPE, on packed (THD) rows
    grad_accumulation: bool | None = None  # weight gradients accumulated straight into main_grad (TE or apex)
    cross_entropy: bool | None = None  # megatron's fused vocab-parallel cross entropy (bf16 runs)


@dataclass
class ModelConfig:
    """A whole NVLM-D model."""

    name: str = "nvlm_d_72b"
    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    recompute: RecomputeConfig = field(default_factory=RecomputeConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    # "auto" picks transformer_engine when it is importable and a GPU is present, else torch.
    impl: Impl = Impl.auto
    init_std: float = 0.02
    init_seed: int = 1234

    @property
    def tokens_per_tile(self) -> int:
        """Image-context tokens one tile becomes: (patches per side x ratio)^2."""
        side = self.vision.patches_per_side * self.projector.downsample_ratio
        return int(round(side)) ** 2

    def validate(self) -> None:
        self.vision.validate()
        self.language.validate()
        self.recompute.validate()
        self.impl = check_choice(Impl, self.impl, "model.impl")
        side = self.vision.patches_per_side * self.projector.downsample_ratio
        if abs(side - round(side)) > 1e-9 or round(1 / self.projector.downsample_ratio) % 1:
            raise ConfigError(
                f"model.projector.downsample_ratio={self.projector.downsample_ratio} does not divide "
                f"the {self.vision.patches_per_side}x{self.vision.patches_per_side} patch grid evenly"
            )


ARCHITECTURE_SECTIONS = ("vision", "projector", "language")


def architecture_diffs(a: ModelConfig, b: ModelConfig, names: tuple[str, str] = ("a", "b")) -> list[str]:
    """``model.section.field: <names[0]> x, <names[1]> y`` for every architecture field that differs.

    The one rule for "same weights layout": every field of the towers except NON_ARCHITECTURE_FIELDS.
    """
    diffs = []
    for section in ARCHITECTURE_SECTIONS:
        sa, sb = getattr(a, section), getattr(b, section)
        for f in fields(sa):
            va, vb = getattr(sa, f.name), getattr(sb, f.name)
            if va != vb and f.name not in NON_ARCHITECTURE_FIELDS:
                diffs.append(f"model.{section}.{f.name}: {names[0]} {va!r}, {names[1]} {vb!r}")
    return diffs
