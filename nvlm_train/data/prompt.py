"""Training samples in an NVLM-D prompt format, with the assistant replies marked for the loss.

The text itself comes from ``nvlm_train.hf.conversation`` (the one implementation, shared with our HF
``chat()`` and the exported ``chat_template``); this module adds what training needs on top: the
placeholder rules of the card's ``chat()``, per-message image expansion
(``<Image><tile_1>PAD*T...<tile_global_thumbnail>PAD*T</Image>``, PAD = ``<|vision_pad|>``) and
``Segment``s that say which characters are assistant replies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nvlm_train.hf.conversation import (
    DEFAULT_PROMPT_FORMAT,
    IM_END,
    IM_START,
    IMAGE_PLACEHOLDER,
    LEGACY_FORMAT,
    PROMPT_FORMATS,
    ROLES,
    THUMBNAIL_TAG,
    PromptFormat,
    get_prompt_format,
    image_token_string,
    render_turns,
    tile_tags,
)

IMAGE_CONTEXT = "<|vision_pad|>"
END_OF_TEXT = "<|endoftext|>"
SPECIAL_TOKENS = (END_OF_TEXT, IM_START, IM_END, IMAGE_CONTEXT)
# ``data.system_prompt`` value meaning "the prompt format's own system message".
PRESET_SYSTEM = "preset"

__all__ = ["DEFAULT_PROMPT_FORMAT", "IMAGE_PLACEHOLDER", "PROMPT_FORMATS", "PRESET_SYSTEM", "PromptFormat",
           "ROLES", "SPECIAL_TOKENS", "THUMBNAIL_TAG", "Segment", "build_segments", "format_chatml",
           "get_prompt_format", "image_block", "resolve_system", "saved_prompt", "tile_tags"]


def resolve_system(fmt: PromptFormat, system_prompt: str | None) -> str | None:
    """``data.system_prompt`` -> the system text: ``preset`` = the format's own, null = none."""
    return fmt.system_message if system_prompt == PRESET_SYSTEM else system_prompt


def saved_prompt(data_section: dict | None) -> tuple[str, str | None]:
    """(format name, system text) that a run's saved ``data`` config section trained with.

    Checkpoints from before prompt presets have no ``prompt_format``: they used newline-separated turns
    and a system turn only where a sample had one, i.e. ``megatron`` without a system message.
    """
    d = data_section or {}
    if "prompt_format" not in d:
        return LEGACY_FORMAT, None
    fmt = get_prompt_format(d["prompt_format"])
    return fmt.name, resolve_system(fmt, d.get("system_prompt", PRESET_SYSTEM))


def image_block(num_tiles: int, tokens_per_tile: int) -> str:
    """The text one image becomes (``<Image>`` .. ``</Image>``)."""
    return image_token_string(num_tiles, tokens_per_tile, "nvlm", IMAGE_CONTEXT)


def expand_image_placeholders(text: str, tiles_per_image: Sequence[int], tokens_per_tile: int) -> str:
    """Replace the i-th ``<image>`` in ``text`` by image i's block; counts must match exactly."""
    parts = text.split(IMAGE_PLACEHOLDER)
    if len(parts) - 1 != len(tiles_per_image):
        raise ValueError(
            f"text has {len(parts) - 1} {IMAGE_PLACEHOLDER} placeholders but {len(tiles_per_image)} images were given"
        )
    out = [parts[0]]
    for n, rest in zip(tiles_per_image, parts[1:]):
        out.append(image_block(n, tokens_per_tile))
        out.append(rest)
    return "".join(out)


@dataclass(frozen=True)
class Segment:
    """A run of prompt text; ``target`` marks assistant reply text (loss is computed on it)."""

    text: str
    target: bool = False


def add_missing_placeholders(messages: Sequence[tuple[str, str]], num_images: int) -> list[tuple[str, str]]:
    """As the card's ``chat()``: with images but no ``<image>`` anywhere, put ``<image>\\n`` before the first
    user message (one per image)."""
    msgs = list(messages)
    if num_images == 0 or any(IMAGE_PLACEHOLDER in text for _, text in msgs):
        return msgs
    for i, (role, text) in enumerate(msgs):
        if role == "user":
            msgs[i] = (role, (IMAGE_PLACEHOLDER + "\n") * num_images + text)
            return msgs
    raise ValueError("the conversation has images but no user message to attach them to")


def build_segments(
    messages: Sequence[tuple[str, str]],
    tiles_per_image: Sequence[int],
    tokens_per_tile: int,
    system: str | None = None,
    add_generation_prompt: bool = False,
    fmt: PromptFormat | str = DEFAULT_PROMPT_FORMAT,
) -> list[Segment]:
    """Segments of a conversation in prompt format ``fmt``; ``messages`` are (role, text), roles
    user/assistant/system; ``system`` is the system text (None: no system turn)."""
    fmt = get_prompt_format(fmt) if isinstance(fmt, str) else fmt
    msgs = add_missing_placeholders(messages, len(tiles_per_image))
    placeholders = sum(text.count(IMAGE_PLACEHOLDER) for _, text in msgs)
    if placeholders != len(tiles_per_image):
        raise ValueError(f"conversation has {placeholders} {IMAGE_PLACEHOLDER} placeholders "
                         f"but {len(tiles_per_image)} images")
    expanded = []
    next_image = 0
    for role, text in msgs:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
        k = text.count(IMAGE_PLACEHOLDER)
        if k:
            if role != "user":
                raise ValueError(f"{IMAGE_PLACEHOLDER} placeholders are only allowed in user messages, not {role}")
            text = expand_image_placeholders(text, tiles_per_image[next_image:next_image + k], tokens_per_tile)
            next_image += k
        expanded.append((role, text))
    return [Segment(text, target) for text, target in render_turns(expanded, fmt, system, add_generation_prompt)]


def format_chatml(
    messages: Sequence[tuple[str, str]],
    tiles_per_image: Sequence[int] = (),
    tokens_per_tile: int = 256,
    system: str | None = None,
    add_generation_prompt: bool = False,
    fmt: PromptFormat | str = DEFAULT_PROMPT_FORMAT,
) -> str:
    """The exact prompt string for a conversation (what HF ``chat()`` tokenises)."""
    return "".join(s.text for s in build_segments(messages, tiles_per_image, tokens_per_tile, system,
                                                 add_generation_prompt, fmt))
