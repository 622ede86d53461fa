"""Writing HF NVLM-D export directories: ``config.json`` builder, modeling-file copy, sharded safetensors.

The exporter maps our training config onto :class:`NVLMDSpec` (plain numbers) and calls
:func:`build_hf_config`; weights are written (``convert.safetensors_writer``) under the key names of
:func:`hf_param_shapes` (the released NVLM-D-72B files).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from . import MODELING_FILES
from .configuration_intern_vit import NVLM_D_DUMMY_HEADS

HF_DIR = Path(__file__).resolve().parent
AUTO_MAP = {
    "AutoConfig": "configuration_nvlm_d.NVLM_D_Config",
    "AutoModel": "modeling_nvlm_d.NVLM_D_Model",
    "AutoModelForCausalLM": "modeling_nvlm_d.NVLM_D_Model",
}


class HFLayout(StrEnum):
    """How an export stores the ViT and spells its config.

    ``released``: as the released NVLM-D-72B files (7 zero dummy ViT heads, ``llm_config.model_type``
    "llama"), loadable by the released remote code and vLLM's ``NVLM_D``. ``internvl``: the plain
    InternViT layout (no dummy heads, "qwen2"), for tools that want that.
    """

    RELEASED = "released"
    INTERNVL = "internvl"

    @property
    def vit_dummy_heads(self) -> int:
        return NVLM_D_DUMMY_HEADS if self is HFLayout.RELEASED else 0

    @property
    def llm_model_type(self) -> str:
        return "llama" if self is HFLayout.RELEASED else "qwen2"


@dataclass
class VisionSpec:
    """InternViT numbers (defaults: InternViT-6B-448px-V1-5). ``num_heads``: the real heads."""

    num_layers: int = 45
    hidden_size: int = 3200
    num_heads: int = 25
    ffn_hidden_size: int = 12800
    image_size: int = 448
    patch_size: int = 14
    norm_eps: float = 1e-6
    norm_type: str = "rms_norm"
    qk_norm: bool = True
    qkv_bias: bool = False
    layer_scale_init: float = 0.1
    num_channels: int = 3
    num_dummy_heads: int = NVLM_D_DUMMY_HEADS


@dataclass
class LLMSpec:
    """Qwen2 numbers (defaults: Qwen2-72B-Instruct). ``vocab_size`` without megatron padding."""

    num_layers: int = 80
    hidden_size: int = 8192
    ffn_hidden_size: int = 29568
    num_heads: int = 64
    num_kv_heads: int = 8
    vocab_size: int = 152064
    max_position_embeddings: int = 32768
    rope_theta: float = 1000000.0
    rope_scaling: dict | None = None  # HF spelling, e.g. {"factor": 3.0, "type": "dynamic"}
    norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 151643
    eos_token_id: int | None = 151645
    initializer_range: float = 0.02
    model_type: str = "llama"  # the released spelling (the LLM is chosen by architectures[0])


@dataclass
class NVLMDSpec:
    """Everything ``config.json`` needs (defaults: NVLM-D-72B as released)."""

    vision: VisionSpec = field(default_factory=VisionSpec)
    llm: LLMSpec = field(default_factory=LLMSpec)
    projector_ffn_hidden_size: int | None = None  # None: the LLM's ffn_hidden_size (29568 in 72B)
    projector_norm_eps: float = 1e-5
    downsample_ratio: float = 0.5
    min_tiles: int = 1
    max_tiles: int = 6
    use_thumbnail: bool = True
    dynamic_image_size: bool = True
    template: str = "chatml"
    prompt_format: str | None = None  # None: the one ``template`` names (chatml -> nvlm_d)
    system_message: str | None = None  # None: the prompt format's own; "": no system turn
    image_tag_type: str = "nvlm"
    img_context_token: str = "<|vision_pad|>"
    img_context_token_id: int | None = 151654  # Qwen2.5 tokenizer
    dtype: str = "bfloat16"


def build_hf_config(spec: NVLMDSpec) -> dict:
    """The ``config.json`` dict of an HF NVLM-D export: every key the released NVLM-D-72B file has,
    spelt as it spells them, plus our extra fields (projector sizes, prompt, dummy-head count)."""
    v, m = spec.vision, spec.llm
    if v.hidden_size % v.num_heads:
        raise ValueError(f"vision hidden_size {v.hidden_size} not divisible by num_heads {v.num_heads}")
    if m.hidden_size % m.num_heads or m.num_heads % m.num_kv_heads:
        raise ValueError(f"LLM heads {m.num_heads}/{m.num_kv_heads} do not fit hidden_size {m.hidden_size}")
    vision_config = {
        "architectures": ["InternVisionModel"],
        "model_type": "intern_vit_6b",
        "num_channels": v.num_channels,
        "patch_size": v.patch_size,
        "image_size": v.image_size,
        "qkv_bias": v.qkv_bias,
        "hidden_size": v.hidden_size,
        "num_attention_heads": v.num_heads,
        "num_dummy_heads": v.num_dummy_heads,
        "intermediate_size": v.ffn_hidden_size,
        "qk_normalization": v.qk_norm,
        "num_hidden_layers": v.num_layers,
        "use_flash_attn": False,
        "hidden_act": "gelu",
        "norm_type": v.norm_type,
        "layer_norm_eps": v.norm_eps,
        "dropout": 0.0,
        "drop_path_rate": 0.0,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "initializer_factor": v.layer_scale_init,
        "torch_dtype": spec.dtype,
        "use_bfloat16": spec.dtype == "bfloat16",
    }
    llm_config = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": m.model_type,
        "vocab_size": m.vocab_size,
        "hidden_size": m.hidden_size,
        "intermediate_size": m.ffn_hidden_size,
        "num_hidden_layers": m.num_layers,
        "num_attention_heads": m.num_heads,
        "num_key_value_heads": m.num_kv_heads,
        "hidden_act": "silu",
        "attention_bias": True,
        "mlp_bias": False,
        "max_position_embeddings": m.max_position_embeddings,
        "max_window_layers": m.num_layers,
        "rms_norm_eps": m.norm_eps,
        "rope_theta": m.rope_theta,
        "rope_scaling": dict(m.rope_scaling) if m.rope_scaling else None,
        "sliding_window": None,
        "use_sliding_window": False,
        "tie_word_embeddings": m.tie_word_embeddings,
        "attention_dropout": 0.0,
        "initializer_range": m.initializer_range,
        "pretraining_tp": 1,
        "use_cache": True,
        "bos_token_id": m.bos_token_id,
        "eos_token_id": m.eos_token_id,
        "torch_dtype": spec.dtype,
        "use_bfloat16": spec.dtype == "bfloat16",
    }
    return {
        "architectures": ["NVLM_D"],
        "model_type": "NVLM_D",
        "auto_map": dict(AUTO_MAP),
        "vision_config": vision_config,
        "llm_config": llm_config,
        "downsample_ratio": spec.downsample_ratio,
        "force_image_size": v.image_size,
        "dynamic_image_size": spec.dynamic_image_size,
        "use_thumbnail": spec.use_thumbnail,
        "ps_version": "v2",
        "select_layer": -1,
        "template": spec.template,
        "prompt_format": spec.prompt_format,
        "system_message": spec.system_message,
        "min_dynamic_patch": spec.min_tiles,
        "max_dynamic_patch": spec.max_tiles,
        "image_tag_type": spec.image_tag_type,
        "img_context_token": spec.img_context_token,
        "img_context_token_id": spec.img_context_token_id,
        "projector_intermediate_size": spec.projector_ffn_hidden_size or m.ffn_hidden_size,
        "projector_layernorm_eps": spec.projector_norm_eps,
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "tie_word_embeddings": m.tie_word_embeddings,
        "torch_dtype": spec.dtype,
        "transformers_version": None,
    }


def nvlm_d_72b_spec() -> NVLMDSpec:
    """The published NVLM-D-72B numbers (model card and released config.json), rope scaling included."""
    spec = NVLMDSpec()
    spec.llm.rope_scaling = {"factor": 3.0, "type": "dynamic"}
    return spec


def copy_modeling_files(out_dir) -> list[Path]:
    """Copy the standalone remote-code files into ``out_dir`` (created if needed); returns the new paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in MODELING_FILES:
        copied.append(Path(shutil.copy2(HF_DIR / name, out / name)))
    return copied


def write_hf_config(out_dir, config: dict) -> Path:
    path = Path(out_dir) / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path


def write_chat_template(out_dir, prompt_format: str, system: str | None) -> None:
    """Put the prompt format's ``chat_template`` into the tokenizer files of ``out_dir``, so that
    ``apply_chat_template`` (and vLLM's chat API) render what the model was trained on: in
    ``tokenizer_config.json`` (all transformers versions) and ``chat_template.jinja`` (newer ones prefer it)."""
    from .conversation import chat_template, get_prompt_format

    template = chat_template(get_prompt_format(prompt_format), system)
    out = Path(out_dir)
    path = out / "tokenizer_config.json"
    cfg = json.loads(path.read_text()) if path.is_file() else {}
    cfg["chat_template"] = template
    path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    (out / "chat_template.jinja").write_text(template)


def hf_param_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """``{hf key: shape}`` of every weight an export with this ``config.json`` dict must hold.

    Builds the model on the meta device (no memory), so it works for 72B too.
    """
    import torch

    from .configuration_nvlm_d import NVLM_D_Config
    from .modeling_nvlm_d import NVLM_D_Model

    cfg = NVLM_D_Config(**{k: v for k, v in config.items() if k not in ("auto_map", "architectures")})
    with torch.device("meta"):
        model = NVLM_D_Model(cfg)
    return {k: tuple(t.shape) for k, t in model.state_dict().items()}
