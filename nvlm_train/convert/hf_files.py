"""Writing HF NVLM-D export directories: the ``config.json`` builder and the modeling-file copy.

:func:`build_hf_config` spells a ``ModelConfig`` (the architecture, one description for the whole
project) plus :class:`ExportSettings` (what only the files say: dtype, layout, prompt, token ids) as
the released NVLM-D-72B ``config.json``; weights are written (``convert.safetensors_writer``) under
the key names of :func:`hf_param_shapes`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from nvlm_train.config.model import LanguageConfig, ModelConfig
from nvlm_train.hf import MODELING_FILES
from nvlm_train.hf.configuration_intern_vit import NVLM_D_DUMMY_HEADS
from nvlm_train.hf.conversation import IMG_CONTEXT_TOKEN
from nvlm_train.vision.tiling import DEFAULT_MAX_TILES

HF_DIR = Path(__file__).resolve().parents[1] / "hf"  # the remote-code files copied into exports
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


@dataclass(frozen=True)
class ExportSettings:
    """What an export's ``config.json`` says beyond the architecture (defaults: the released files)."""

    dtype: str = "bfloat16"
    layout: HFLayout = HFLayout.RELEASED
    vit_dummy_heads: int | None = None  # None: the layout's (an import describes the files it reads)
    max_tiles: int = DEFAULT_MAX_TILES
    prompt_format: str | None = None  # None: the one ``template`` names (chatml -> nvlm_d)
    system_message: str | None = None  # None: the prompt format's own; "": no system turn
    bos_token_id: int | None = 151643  # Qwen2.5 tokenizer ids
    eos_token_id: int | None = 151645

    @property
    def dummy_heads(self) -> int:
        return self.layout.vit_dummy_heads if self.vit_dummy_heads is None else self.vit_dummy_heads


def hf_rope_scaling(lang: LanguageConfig) -> dict | None:
    """``rope_scaling`` as the released config.json spells it, or None."""
    if lang.rope_scaling_type is None:
        return None
    return {"factor": lang.rope_scaling_factor, "type": str(lang.rope_scaling_type)}


def build_hf_config(model: ModelConfig, export: ExportSettings = ExportSettings()) -> dict:
    """The ``config.json`` dict of an HF NVLM-D export: every key the released NVLM-D-72B file has,
    spelt as it spells them, plus our extra fields (projector sizes, prompt, dummy-head count)."""
    model.validate()
    v, m, proj, dtype = model.vision, model.language, model.projector, export.dtype
    vision_config = {
        "architectures": ["InternVisionModel"],
        "model_type": "intern_vit_6b",
        "num_channels": v.num_channels,
        "patch_size": v.patch_size,
        "image_size": v.image_size,
        "qkv_bias": False,
        "hidden_size": v.hidden_size,
        "num_attention_heads": v.num_attention_heads,
        "num_dummy_heads": export.dummy_heads,
        "intermediate_size": v.ffn_hidden_size,
        "qk_normalization": True,
        "num_hidden_layers": v.num_layers,
        "use_flash_attn": False,
        "hidden_act": "gelu",
        "norm_type": "rms_norm",
        "layer_norm_eps": v.norm_eps,
        "dropout": 0.0,
        "drop_path_rate": 0.0,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "initializer_factor": v.layerscale_init,
        "torch_dtype": dtype,
        "use_bfloat16": dtype == "bfloat16",
    }
    llm_config = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": export.layout.llm_model_type,
        "vocab_size": m.vocab_size,
        "hidden_size": m.hidden_size,
        "intermediate_size": m.ffn_hidden_size,
        "num_hidden_layers": m.num_layers,
        "num_attention_heads": m.num_attention_heads,
        "num_key_value_heads": m.num_query_groups,
        "hidden_act": "silu",
        "attention_bias": True,
        "mlp_bias": False,
        "max_position_embeddings": m.max_position_embeddings,
        "max_window_layers": m.num_layers,
        "rms_norm_eps": m.norm_eps,
        "rope_theta": m.rotary_base,
        "rope_scaling": hf_rope_scaling(m),
        "sliding_window": None,
        "use_sliding_window": False,
        "tie_word_embeddings": False,
        "attention_dropout": 0.0,
        "initializer_range": model.init_std,
        "pretraining_tp": 1,
        "use_cache": True,
        "bos_token_id": export.bos_token_id,
        "eos_token_id": export.eos_token_id,
        "torch_dtype": dtype,
        "use_bfloat16": dtype == "bfloat16",
    }
    return {
        "architectures": ["NVLM_D"],
        "model_type": "NVLM_D",
        "auto_map": dict(AUTO_MAP),
        "vision_config": vision_config,
        "llm_config": llm_config,
        "downsample_ratio": proj.downsample_ratio,
        "force_image_size": v.image_size,
        "dynamic_image_size": True,
        "use_thumbnail": True,
        "ps_version": "v2",
        "select_layer": -1,
        "template": "chatml",
        "prompt_format": export.prompt_format,
        "system_message": export.system_message,
        "min_dynamic_patch": 1,
        "max_dynamic_patch": export.max_tiles,
        "image_tag_type": "nvlm",
        "img_context_token": IMG_CONTEXT_TOKEN,
        "img_context_token_id": m.image_token_id,
        "projector_intermediate_size": proj.ffn_hidden_size,
        "projector_layernorm_eps": proj.layernorm_eps,
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "tie_word_embeddings": False,
        "torch_dtype": dtype,
        "transformers_version": None,
    }


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
    from nvlm_train.hf.conversation import chat_template, get_prompt_format

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

    from nvlm_train.hf.configuration_nvlm_d import NVLM_D_Config
    from nvlm_train.hf.modeling_nvlm_d import NVLM_D_Model

    cfg = NVLM_D_Config(**{k: v for k, v in config.items() if k not in ("auto_map", "architectures")})
    with torch.device("meta"):
        model = NVLM_D_Model(cfg)
    return {k: tuple(t.shape) for k, t in model.state_dict().items()}
