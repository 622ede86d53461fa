"""NVLM-D prompt formats: the one implementation of the prompt text (standalone, stdlib only).

Copied flat into HF export directories and imported by the training data pipeline, so training
samples, our evaluation, our HF ``chat()`` and the exported tokenizer's ``chat_template`` render the
same string. Named presets:

* ``nvlm_d`` -- exactly the released ``chat()`` (template ``chatml``, "MPT" separators): system
  ``Answer the questions.``, **no newline after** ``<|im_end|>``::

    <|im_start|>system\\nAnswer the questions.<|im_end|><|im_start|>user\\n<image>\\nQ<|im_end|><|im_start|>assistant\\n

* ``megatron`` -- the turns Megatron-LM's NVLM-D SFT used: the same, with ``\\n`` after each ``<|im_end|>``.

A system message of ``None`` or ``""`` drops the system turn. An image placeholder ``<image>`` expands
to ``<Image>`` + per tile (``<tile_1>``, ..., ``<tile_{n-1}>``, ``<tile_global_thumbnail>``) the tag
followed by ``num_image_token`` image-context tokens + ``</Image>``. Tags are plain text.
"""

import json
from dataclasses import dataclass

IMAGE_PLACEHOLDER = "<image>"
IMG_START_TOKEN = "<Image>"
IMG_END_TOKEN = "</Image>"
IMG_CONTEXT_TOKEN = "<|vision_pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
THUMBNAIL_TAG = "<tile_global_thumbnail>"
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class PromptFormat:
    """A named prompt preset: its default system message and what follows each ``<|im_end|>``."""

    name: str
    system_message: str
    turn_end: str


PROMPT_FORMATS = {
    "nvlm_d": PromptFormat("nvlm_d", "Answer the questions.", ""),
    "megatron": PromptFormat("megatron", "Answer the questions.", "\n"),
}
DEFAULT_PROMPT_FORMAT = "nvlm_d"
# The released config.json names its conversation template; ``chatml`` is the ``nvlm_d`` preset.
TEMPLATE_FORMATS = {"chatml": "nvlm_d"}
# What configs and checkpoints written before presets existed were trained with.
LEGACY_FORMAT = "megatron"


def get_prompt_format(name):
    if name not in PROMPT_FORMATS:
        raise ValueError(f"unknown prompt format {name!r}; use one of {sorted(PROMPT_FORMATS)}")
    return PROMPT_FORMATS[name]


def format_for_config(config):
    """(PromptFormat, system message or None) of an NVLM-D config: ours, the released one (no prompt
    keys: its ``template``), or one of our exports from before presets (a ``system_message`` but no
    ``prompt_format``: they were trained with newline-separated turns, ``megatron``)."""
    name = getattr(config, "prompt_format", None)
    system = getattr(config, "system_message", None)
    if name is None:
        name = LEGACY_FORMAT if system is not None else TEMPLATE_FORMATS.get(getattr(config, "template", None))
    fmt = get_prompt_format(name or DEFAULT_PROMPT_FORMAT)
    return fmt, (fmt.system_message if system is None else system)


def render_turns(messages, fmt, system=None, add_generation_prompt=False):
    """``(text, is_reply)`` pieces of a conversation; ``messages`` are ``(role, text)`` pairs.

    ``is_reply`` marks an assistant reply and its ``<|im_end|>``: exactly what training puts the loss on.
    """
    pieces = []
    if system:
        pieces.append((f"{IM_START}system\n{system}{IM_END}{fmt.turn_end}", False))
    for role, text in messages:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
        if role == "assistant":
            pieces.append((f"{IM_START}assistant\n", False))
            pieces.append((f"{text}{IM_END}", True))
            if fmt.turn_end:
                pieces.append((fmt.turn_end, False))
        else:
            pieces.append((f"{IM_START}{role}\n{text}{IM_END}{fmt.turn_end}", False))
    if add_generation_prompt:
        pieces.append((f"{IM_START}assistant\n", False))
    return pieces


def build_chat_prompt(question, history=None, fmt=None, system=None):
    """The prompt ``chat()`` sends for ``question`` after ``history`` [(question, answer), ...],
    ending with the open assistant turn ``<|im_start|>assistant\\n``."""
    fmt = fmt or get_prompt_format(DEFAULT_PROMPT_FORMAT)
    messages = []
    for old_question, old_answer in history or []:
        messages += [("user", old_question), ("assistant", old_answer)]
    messages.append(("user", question))
    return "".join(text for text, _ in render_turns(messages, fmt, system, add_generation_prompt=True))


def chat_template(fmt, system=None):
    """A Jinja ``chat_template`` that renders ``render_turns(..., add_generation_prompt)`` exactly.

    A leading ``system`` message replaces ``system``; list contents (OpenAI style) put ``<image>\\n``
    for each image part, then the text parts.
    """
    end = json.dumps(fmt.turn_end)
    default = json.dumps(system) if system else "none"
    return (
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- set sys = messages[0]['content'] -%}{%- set msgs = messages[1:] -%}"
        "{%- else -%}{%- set sys = " + default + " -%}{%- set msgs = messages -%}{%- endif -%}"
        "{%- if sys -%}{{ '<|im_start|>system\\n' + sys + '<|im_end|>' + " + end + " }}{%- endif -%}"
        "{%- for m in msgs -%}"
        "{%- if m['content'] is string -%}{%- set text = m['content'] -%}"
        "{%- else -%}{%- set text = namespace(images='', words='') -%}"
        "{%- for part in m['content'] -%}"
        "{%- if part['type'] in ('image', 'image_url') -%}{%- set text.images = text.images + '<image>\\n' -%}"
        "{%- elif part['type'] == 'text' -%}{%- set text.words = text.words + part['text'] -%}{%- endif -%}"
        "{%- endfor -%}{%- set text = text.images + text.words -%}{%- endif -%}"
        "{{ '<|im_start|>' + m['role'] + '\\n' + text + '<|im_end|>' + " + end + " }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
    )


def tile_tags(num_tiles):
    """Text tags of an image's tiles: grid tiles ``<tile_1>``.. then the thumbnail (or the only tile)."""
    if num_tiles < 1:
        raise ValueError(f"an image needs at least one tile, got {num_tiles}")
    return [f"<tile_{i}>" for i in range(1, num_tiles)] + [THUMBNAIL_TAG]


def image_token_string(
    num_tiles, num_image_token, image_tag_type="nvlm", img_context_token=IMG_CONTEXT_TOKEN
):
    """The text that replaces one ``<image>`` placeholder."""
    if image_tag_type == "nvlm":
        body = "".join(tag + img_context_token * num_image_token for tag in tile_tags(num_tiles))
        return IMG_START_TOKEN + body + IMG_END_TOKEN
    if image_tag_type == "internvl":
        return "<img>" + img_context_token * (num_image_token * num_tiles) + "</img>"
    raise ValueError(f"unknown image_tag_type {image_tag_type!r} (expected 'nvlm' or 'internvl')")


def expand_image_placeholders(
    prompt, num_patches_list, num_image_token, image_tag_type="nvlm", img_context_token=IMG_CONTEXT_TOKEN
):
    """Replace the ``<image>`` placeholders of ``prompt`` in order, one per entry of ``num_patches_list``."""
    parts = prompt.split(IMAGE_PLACEHOLDER)
    if len(parts) - 1 != len(num_patches_list):
        raise ValueError(
            f"prompt has {len(parts) - 1} {IMAGE_PLACEHOLDER} placeholder(s) but num_patches_list has "
            f"{len(num_patches_list)} image(s)"
        )
    out = [parts[0]]
    for num_tiles, rest in zip(num_patches_list, parts[1:]):
        out.append(image_token_string(int(num_tiles), num_image_token, image_tag_type, img_context_token))
        out.append(rest)
    return "".join(out)
