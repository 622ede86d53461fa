"""NVLM-D (InternViT + pixel-shuffle MLP projector ``mlp1`` + Qwen2) for HF exports.

Standalone file, copied flat into every export directory next to ``config.json`` and loaded with
``trust_remote_code=True``. Parameter names: ``vision_model.*`` (see ``modeling_intern_vit.py``),
``mlp1.{0,1,3}.*`` and ``language_model.*`` (transformers' own ``Qwen2ForCausalLM``).
"""

import torch
from torch import nn
from transformers import Qwen2ForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import logging

from .configuration_nvlm_d import NVLM_D_Config
from .conversation import (
    IM_END,
    IMAGE_PLACEHOLDER,
    IMG_CONTEXT_TOKEN,
    IMG_END_TOKEN,
    IMG_START_TOKEN,
    build_chat_prompt,
    expand_image_placeholders,
    format_for_config,
)
from .modeling_intern_vit import InternVisionModel

logger = logging.get_logger(__name__)


def pixel_shuffle(x, scale_factor=0.5, ps_version="v2"):
    """InternVL pixel shuffle of ViT features ``x [n, h, w, c]`` (h = rows of the patch grid).

    With ``ps_version="v2"`` and ratio r = 1/scale_factor the result is ``[n, h/r, w/r, c*r*r]`` where
    ``out[n, i, j, (di*r + dj)*c + k] == x[n, r*i + di, r*j + dj, k]``. ``"v1"`` leaves the output grid
    transposed (InternVL's legacy behaviour).
    """
    n, w, h, c = x.shape
    ratio = round(1 / scale_factor)
    if abs(ratio * scale_factor - 1) > 1e-6 or w % ratio or h % ratio:
        raise ValueError(
            f"pixel_shuffle: grid {w}x{h} not divisible by 1/scale_factor (scale_factor={scale_factor})"
        )
    x = x.reshape(n, w, h // ratio, c * ratio)
    x = x.permute(0, 2, 1, 3).contiguous()
    x = x.reshape(n, h // ratio, w // ratio, c * ratio * ratio)
    if ps_version != "v1":
        x = x.permute(0, 2, 1, 3).contiguous()
    return x


def _flash_attn_available():
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


class NVLM_D_Model(PreTrainedModel):
    config_class = NVLM_D_Config
    main_input_name = "pixel_values"
    _no_split_modules = ["InternVisionEncoderLayer", "Qwen2DecoderLayer"]
    _skip_keys_device_placement = "past_key_values"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flash_attn_2 = True

    def __init__(self, config: NVLM_D_Config, vision_model=None, language_model=None, use_flash_attn=False):
        super().__init__(config)
        # flash-attn is optional: the ViT always uses torch SDPA; the flag is kept for compatibility.
        config.vision_config.use_flash_attn = bool(use_flash_attn) and _flash_attn_available()
        vcfg, lcfg = config.vision_config, config.llm_config
        image_size = config.force_image_size or vcfg.image_size
        self.patch_size = vcfg.patch_size
        self.template = config.template
        self.select_layer = config.select_layer
        self.downsample_ratio = config.downsample_ratio
        self.ps_version = config.ps_version
        self.image_tag_type = getattr(config, "image_tag_type", "nvlm")
        self.num_image_token = int((image_size // self.patch_size) ** 2 * (config.downsample_ratio**2))
        self.prompt_format, self.system_message = format_for_config(config)

        self.vision_model = vision_model if vision_model is not None else InternVisionModel(vcfg)
        self.language_model = language_model if language_model is not None else Qwen2ForCausalLM(lcfg)

        shuffled = vcfg.hidden_size * round(1 / config.downsample_ratio) ** 2
        inter = getattr(config, "projector_intermediate_size", None) or lcfg.intermediate_size
        eps = getattr(config, "projector_layernorm_eps", 1e-5)
        self.mlp1 = nn.Sequential(
            nn.LayerNorm(shuffled, eps=eps),
            nn.Linear(shuffled, inter, bias=False),
            nn.GELU(),
            nn.Linear(inter, lcfg.hidden_size, bias=False),
        )
        self.img_context_token_id = getattr(config, "img_context_token_id", None)
        self.post_init()

    # ----------------------------------------------------------------------------------- plumbing
    @torch.no_grad()
    def _init_weights(self, module):
        std = getattr(self.config.llm_config, "initializer_range", 0.02)
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value):
        self.language_model.set_output_embeddings(value)

    # ----------------------------------------------------------------------------------- vision
    def pixel_shuffle(self, x, scale_factor=0.5):
        return pixel_shuffle(x, scale_factor, self.ps_version)

    def extract_feature(self, pixel_values):
        """``pixel_values [tiles, 3, H, W]`` -> image embeddings ``[tiles, num_image_token, llm_hidden]``."""
        if self.select_layer == -1:
            vit_embeds = self.vision_model(pixel_values=pixel_values, return_dict=True).last_hidden_state
        else:
            vit_embeds = self.vision_model(
                pixel_values=pixel_values, output_hidden_states=True, return_dict=True
            ).hidden_states[self.select_layer]
        vit_embeds = vit_embeds[:, 1:, :]  # drop the class token
        side = int(round(vit_embeds.shape[1] ** 0.5))
        vit_embeds = vit_embeds.reshape(vit_embeds.shape[0], side, side, -1)
        vit_embeds = self.pixel_shuffle(vit_embeds, scale_factor=self.downsample_ratio)
        vit_embeds = vit_embeds.reshape(vit_embeds.shape[0], -1, vit_embeds.shape[-1])
        return self.mlp1(vit_embeds.to(self.mlp1[1].weight.dtype))

    def _image_token_id(self, image_token_id=None):
        token_id = image_token_id if image_token_id is not None else self.img_context_token_id
        if token_id is None:
            token_id = getattr(self.config, "img_context_token_id", None)
        if token_id is None:
            raise ValueError(
                "image-context token id unknown: set model.img_context_token_id (chat() does it from the "
                "tokenizer) or config.img_context_token_id"
            )
        return int(token_id)

    def merge_image_embeddings(self, input_ids, inputs_embeds, vit_embeds, image_token_id=None):
        """Put ``vit_embeds [tiles, tokens, hidden]`` at the image-context positions of ``input_ids``
        (row-major over the batch, tile after tile). Returns new embeddings; raises on a count mismatch."""
        token_id = self._image_token_id(image_token_id)
        selected = input_ids == token_id
        num_slots = int(selected.sum())
        hidden = inputs_embeds.shape[-1]
        flat = vit_embeds.reshape(-1, hidden)
        if num_slots != flat.shape[0]:
            raise ValueError(
                f"number of image-context tokens in input_ids ({num_slots}) != number of image embeddings "
                f"({flat.shape[0]} = {vit_embeds.shape[0]} tiles x {vit_embeds.shape[1]} tokens per tile)"
            )
        if num_slots == 0:
            return inputs_embeds
        flat = flat.to(device=inputs_embeds.device, dtype=inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(selected.unsqueeze(-1).to(inputs_embeds.device), flat)

    def build_inputs_embeds(
        self, input_ids, pixel_values=None, image_flags=None, visual_features=None, image_token_id=None
    ):
        """Token embeddings of ``input_ids`` with image embeddings substituted at image-context tokens."""
        inputs_embeds = self.language_model.get_input_embeddings()(input_ids)
        if visual_features is not None:
            vit_embeds = visual_features
        elif pixel_values is not None:
            vit_embeds = self.extract_feature(pixel_values)
        else:
            return inputs_embeds
        if image_flags is not None:
            vit_embeds = vit_embeds[image_flags.reshape(-1) == 1]
        return self.merge_image_embeddings(input_ids, inputs_embeds, vit_embeds, image_token_id)

    # ----------------------------------------------------------------------------------- LM
    def forward(
        self,
        pixel_values=None,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        image_flags=None,
        past_key_values=None,
        labels=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        inputs_embeds=None,
        image_token_id=None,
        **kwargs,
    ):
        """Causal-LM forward. ``labels`` follow the HF convention (unshifted; -100 ignored).

        ``pixel_values [tiles, 3, H, W]`` are encoded and substituted at the image-context tokens
        (``<|vision_pad|>``) in order; ``image_flags [tiles]`` (optional) drops tiles flagged 0 (dummy
        tiles of text-only samples, as InternVL training does).
        """
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("forward needs input_ids or inputs_embeds")
            inputs_embeds = self.build_inputs_embeds(
                input_ids, pixel_values=pixel_values, image_flags=image_flags, image_token_id=image_token_id
            )
        lm_kwargs = {
            k: v
            for k, v in dict(
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                labels=labels,
                use_cache=use_cache,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
            ).items()
            if v is not None
        }
        outputs = self.language_model(inputs_embeds=inputs_embeds, return_dict=True, **lm_kwargs, **kwargs)
        result = CausalLMOutputWithPast(
            loss=outputs.loss,
            logits=outputs.logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        if return_dict is False:
            return result.to_tuple()
        return result

    @torch.no_grad()
    def generate(
        self,
        pixel_values=None,
        input_ids=None,
        attention_mask=None,
        visual_features=None,
        generation_config=None,
        output_hidden_states=None,
        image_token_id=None,
        **generate_kwargs,
    ):
        """Generate from ``input_ids`` (+ images); returns only the new tokens."""
        inputs_embeds = self.build_inputs_embeds(
            input_ids,
            pixel_values=pixel_values,
            visual_features=visual_features,
            image_token_id=image_token_id,
        )
        extra = {}
        if generation_config is not None:
            extra["generation_config"] = generation_config
        if output_hidden_states is not None:
            extra["output_hidden_states"] = output_hidden_states
        generate_kwargs.setdefault("use_cache", True)
        if generate_kwargs.get("bos_token_id") is None and self.language_model.generation_config.bos_token_id is None:
            # transformers 4.39 builds the (empty) prompt ids of an inputs_embeds-only generate from the BOS id
            # and refuses without one; the value is never fed to the model.
            eos = generate_kwargs.get("eos_token_id")
            generate_kwargs["bos_token_id"] = eos if isinstance(eos, int) else 0
        return self.language_model.generate(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, **extra, **generate_kwargs
        )

    # ----------------------------------------------------------------------------------- chat
    def build_chat_query(self, question, history=None, num_patches_list=(), img_context_token=IMG_CONTEXT_TOKEN):
        """The full prompt text ``chat()`` tokenizes (image placeholders expanded)."""
        query = build_chat_prompt(question, history, self.prompt_format, self.system_message)
        return expand_image_placeholders(
            query, list(num_patches_list), self.num_image_token, self.image_tag_type, img_context_token
        )

    def chat_without_sys_prompt(self, *args, **kwargs):
        """``chat()`` (same arguments) without the system turn, as the released method of this name."""
        saved, self.system_message = self.system_message, None
        try:
            return self.chat(*args, **kwargs)
        finally:
            self.system_message = saved

    def chat(
        self,
        tokenizer,
        pixel_values,
        question,
        generation_config,
        history=None,
        return_history=False,
        num_patches_list=None,
        IMG_START_TOKEN=IMG_START_TOKEN,  # noqa: N803  (InternVL-compatible keyword names)
        IMG_END_TOKEN=IMG_END_TOKEN,  # noqa: N803
        IMG_CONTEXT_TOKEN=IMG_CONTEXT_TOKEN,  # noqa: N803
        verbose=False,
        visual_features=None,
    ):
        """One chat turn, as the released NVLM-D ``chat()``. ``generation_config`` is a dict of generate kwargs.

        The prompt is the config's prompt format (the released one by default: system ``Answer the
        questions.``, no newline after ``<|im_end|>``). ``<image>\\n`` is put in front of the question only
        when ``history`` is None, images are given and the question has no ``<image>``. As released,
        IMG_START/END_TOKEN do not change the image text (``<Image>..</Image>``). Generation stops at
        ``<|im_end|>``; the reply is the text before the first ``<|im_end|>``, stripped. Returns the
        response, or ``(response, history)`` with ``return_history=True`` (``history``: (question, answer)
        pairs).
        """
        if history is None and pixel_values is not None and IMAGE_PLACEHOLDER not in question:
            question = IMAGE_PLACEHOLDER + "\n" + question
        history = [] if history is None else list(history)
        if num_patches_list is None:
            num_patches_list = [pixel_values.shape[0]] if pixel_values is not None else []
        num_patches_list = [int(n) for n in num_patches_list]
        if pixel_values is not None and sum(num_patches_list) != pixel_values.shape[0]:
            raise ValueError(
                f"num_patches_list sums to {sum(num_patches_list)} but pixel_values has "
                f"{pixel_values.shape[0]} tiles"
            )

        self.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
        query = self.build_chat_query(question, history, num_patches_list, IMG_CONTEXT_TOKEN)

        model_inputs = tokenizer(query, return_tensors="pt", add_special_tokens=False)
        device = self.get_input_embeddings().weight.device
        input_ids = model_inputs["input_ids"].to(device)
        attention_mask = model_inputs["attention_mask"].to(device)
        gen_kwargs = dict(generation_config or {})
        gen_kwargs["eos_token_id"] = tokenizer.convert_tokens_to_ids(IM_END)
        if gen_kwargs.get("pad_token_id") is None and tokenizer.pad_token_id is not None:
            gen_kwargs["pad_token_id"] = tokenizer.pad_token_id
        if pixel_values is not None:
            vit_dtype = self.vision_model.embeddings.patch_embedding.weight.dtype
            pixel_values = pixel_values.to(device=device, dtype=vit_dtype)
        output_ids = self.generate(
            pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask,
            visual_features=visual_features, **gen_kwargs
        )
        response = tokenizer.batch_decode(output_ids, skip_special_tokens=True)[0]
        response = response.split(IM_END)[0].strip()
        history.append((question, response))
        if verbose:
            print(query.replace(IMG_CONTEXT_TOKEN, ""), response)
        if return_history:
            return response, history
        return response
