"""NVLM-D configuration (standalone file, copied into every HF NVLM-D export directory).

Composite config: ``vision_config`` (InternViT) + ``llm_config`` (Qwen2) + projector / tiling fields.
Works with no arguments (defaults: NVLM-D-72B numbers), so transformers may instantiate it bare.
"""

import copy

from transformers import Qwen2Config
from transformers.configuration_utils import PretrainedConfig

from .configuration_intern_vit import InternVisionConfig


class NVLM_D_Config(PretrainedConfig):
    model_type = "NVLM_D"
    is_composition = True
    # transformers 4.5x instantiates composite configs bare unless told not to; ours can run bare anyway,
    # and with this flag 4.5x writes the full (not diffed) nested configs.
    has_no_defaults_at_init = True
    # Works on 4.5x (plain class dict) and 5.x (overrides the classproperty): lets transformers propagate
    # dtype / attention implementation to the nested configs.
    sub_configs = {"vision_config": InternVisionConfig, "llm_config": Qwen2Config}

    def __init__(
        self,
        vision_config=None,
        llm_config=None,
        use_backbone_lora=0,
        use_llm_lora=0,
        select_layer=-1,
        force_image_size=448,
        downsample_ratio=0.5,
        template="chatml",
        dynamic_image_size=True,
        use_thumbnail=True,
        ps_version="v2",
        min_dynamic_patch=1,
        max_dynamic_patch=6,
        image_tag_type="nvlm",
        projector_intermediate_size=None,
        projector_layernorm_eps=1e-5,
        img_context_token="<|vision_pad|>",
        img_context_token_id=None,
        system_message=None,
        prompt_format=None,
        **kwargs,
    ):
        # Nested configs first, so that anything the base __init__ propagates finds them.
        if isinstance(vision_config, InternVisionConfig):
            self.vision_config = vision_config
        else:
            self.vision_config = InternVisionConfig(**copy.deepcopy(vision_config or {}))
        if isinstance(llm_config, Qwen2Config):
            self.llm_config = llm_config
        else:
            llm = copy.deepcopy(llm_config) if llm_config is not None else _default_llm_config()
            # The LLM is chosen by architectures[0], as the released code does: the released file spells
            # its Qwen2 LLM with model_type "llama".
            llm.pop("model_type", None)
            arch = (llm.get("architectures") or ["Qwen2ForCausalLM"])[0]
            if arch != "Qwen2ForCausalLM":
                raise ValueError(f"NVLM_D_Config: llm_config.architectures[0] must be 'Qwen2ForCausalLM', got {arch!r}")
            llm["architectures"] = ["Qwen2ForCausalLM"]
            self.llm_config = Qwen2Config(**llm)
        if not self.llm_config.architectures:
            self.llm_config.architectures = ["Qwen2ForCausalLM"]
        kwargs.pop("model_type", None)
        kwargs.setdefault("tie_word_embeddings", bool(getattr(self.llm_config, "tie_word_embeddings", False)))
        super().__init__(**kwargs)
        self.use_backbone_lora = use_backbone_lora
        self.use_llm_lora = use_llm_lora
        self.select_layer = select_layer
        self.force_image_size = force_image_size
        self.downsample_ratio = downsample_ratio
        self.template = template
        self.dynamic_image_size = dynamic_image_size
        self.use_thumbnail = use_thumbnail
        self.ps_version = ps_version
        self.min_dynamic_patch = min_dynamic_patch
        self.max_dynamic_patch = max_dynamic_patch
        self.image_tag_type = image_tag_type
        self.projector_intermediate_size = projector_intermediate_size
        self.projector_layernorm_eps = projector_layernorm_eps
        self.img_context_token = img_context_token
        self.img_context_token_id = img_context_token_id
        # None: the prompt format's own system message; "": no system turn. prompt_format None: the one
        # ``template`` names (chatml -> nvlm_d, the released chat()).
        self.system_message = system_message
        self.prompt_format = prompt_format


def _default_llm_config():
    """Qwen2-72B-Instruct numbers (the NVLM-D-72B LLM)."""
    return dict(
        architectures=["Qwen2ForCausalLM"],
        vocab_size=152064,
        hidden_size=8192,
        intermediate_size=29568,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        hidden_act="silu",
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        tie_word_embeddings=False,
        use_sliding_window=False,
        sliding_window=None,
        bos_token_id=151643,
        eos_token_id=151645,
    )
