"""NVLM-D prompt layout: ChatML turns with ``<image>`` placeholders expanded into tile-tagged runs.

The layout is the HF ``chat()`` one (DESIGN.md section 1), so training and inference share it:
``<Image><tile_1>PAD*T<tile_2>PAD*T...<tile_global_thumbnail>PAD*T</Image>`` where PAD is
``<|vision_pad|>`` and T the tokens per tile. Tags are plain text. ``build_segments`` also says which
characters are assistant replies, so the encoder can put the loss mask on exactly those.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

IMAGE_PLACEHOLDER = "<image>"
IMAGE_CONTEXT = "<|vision_pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
SPECIAL_TOKENS = (END_OF_TEXT, IM_START, IM_END, IMAGE_CONTEXT)
ROLES = ("system", "user", "assistant")
THUMBNAIL_TAG = "<tile_global_thumbnail>"


def tile_tags(num_tiles: int) -> list[str]:
    """``<tile_1>`` .. ``<tile_{n-1}>`` for the grid, ``<tile_global_thumbnail>`` for the last tile."""
    if num_tiles < 1:
        raise ValueError(f"an image needs at least one tile, got {num_tiles}")
    return [f"<tile_{i}>" for i in range(1, num_tiles)] + [THUMBNAIL_TAG]


def image_block(num_tiles: int, tokens_per_tile: int) -> str:
    """The text one image becomes (``<Image>`` .. ``</Image>``)."""
    run = IMAGE_CONTEXT * tokens_per_tile
    return "<Image>" + "".join(tag + run for tag in tile_tags(num_tiles)) + "</Image>"


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
) -> list[Segment]:
    """ChatML segments for a conversation; ``messages`` are (role, text) with roles user/assistant/system."""
    msgs = add_missing_placeholders(messages, len(tiles_per_image))
    placeholders = sum(text.count(IMAGE_PLACEHOLDER) for _, text in msgs)
    if placeholders != len(tiles_per_image):
        raise ValueError(f"conversation has {placeholders} {IMAGE_PLACEHOLDER} placeholders "
                         f"but {len(tiles_per_image)} images")
    segments: list[Segment] = []
    if system is not None:
        segments.append(Segment(f"{IM_START}system\n{system}{IM_END}\n"))
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
        if role == "assistant":
            segments.append(Segment(f"{IM_START}assistant\n"))
            segments.append(Segment(f"{text}{IM_END}", target=True))
            segments.append(Segment("\n"))
        else:
            segments.append(Segment(f"{IM_START}{role}\n{text}{IM_END}\n"))
    if add_generation_prompt:
        segments.append(Segment(f"{IM_START}assistant\n"))
    return segments


def format_chatml(
    messages: Sequence[tuple[str, str]],
    tiles_per_image: Sequence[int] = (),
    tokens_per_tile: int = 256,
    system: str | None = None,
    add_generation_prompt: bool = False,
) -> str:
    """The exact prompt string for a conversation (what HF ``chat()`` tokenises)."""
    return "".join(s.text for s in build_segments(messages, tiles_per_image, tokens_per_tile, system,
                                                 add_generation_prompt))
