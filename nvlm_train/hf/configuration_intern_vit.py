"""InternViT configuration (standalone file, copied into every HF NVLM-D export directory).

Field names follow the published InternViT-6B-448px-V1-5 ``config.json`` (``vision_config`` of NVLM-D).
Defaults are the InternViT-6B-448px-V1-5 numbers used by NVLM-D-72B. ``num_dummy_heads`` (our key) is
how many all-zero attention heads the stored weights carry after the real ones: 7 when absent, as the
released NVLM-D-72B files and their remote code (which always adds 7) have it; 0 is the plain
InternViT layout (``qkv`` [3 x hidden, hidden]).
"""

from transformers.configuration_utils import PretrainedConfig

NVLM_D_DUMMY_HEADS = 7


class InternVisionConfig(PretrainedConfig):
    model_type = "intern_vit_6b"

    def __init__(
        self,
        num_channels=3,
        patch_size=14,
        image_size=448,
        qkv_bias=False,
        hidden_size=3200,
        num_attention_heads=25,
        intermediate_size=12800,
        qk_normalization=True,
        num_hidden_layers=45,
        use_flash_attn=False,
        hidden_act="gelu",
        norm_type="rms_norm",
        layer_norm_eps=1e-6,
        dropout=0.0,
        drop_path_rate=0.0,
        attention_dropout=0.0,
        initializer_range=0.02,
        initializer_factor=0.1,
        num_dummy_heads=NVLM_D_DUMMY_HEADS,
        **kwargs,
    ):
        kwargs.pop("model_type", None)
        super().__init__(**kwargs)
        self.num_channels = num_channels
        self.patch_size = patch_size
        self.image_size = image_size
        self.qkv_bias = qkv_bias
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.qk_normalization = qk_normalization
        self.num_hidden_layers = num_hidden_layers
        self.use_flash_attn = use_flash_attn
        self.hidden_act = hidden_act
        self.norm_type = norm_type
        self.layer_norm_eps = layer_norm_eps
        self.dropout = dropout
        self.drop_path_rate = drop_path_rate
        self.attention_dropout = attention_dropout
        self.initializer_range = initializer_range
        self.initializer_factor = initializer_factor
        self.num_dummy_heads = int(num_dummy_heads)
