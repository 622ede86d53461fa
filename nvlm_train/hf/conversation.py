"""NVLM-D prompt layout (standalone, no third-party imports; copied flat into HF export directories).

ChatML turns: ``<|im_start|>{role}\\n{content}<|im_end|>\\n``. A system turn is emitted only when a
non-empty system message is configured (NVLM-D's default: none). An image placeholder ``<image>``
expands to ``<Image>`` + per tile (``<tile_1>``, ..., ``<tile_{n-1}>``, ``<tile_global_thumbnail>``)
the tag followed by ``num_image_token`` image-context tokens + ``</Image>``. Tags are plain text.
"""

IMAGE_PLACEHOLDER = "<image>"
IMG_START_TOKEN = "<Image>"
IMG_END_TOKEN = "</Image>"
IMG_CONTEXT_TOKEN = "<|vision_pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
THUMBNAIL_TAG = "<tile_global_thumbnail>"


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


def chatml_turn(role, content):
    return f"{IM_START}{role}\n{content}{IM_END}\n"


def build_chat_prompt(question, history=None, system_message=""):
    """ChatML prompt for ``question`` after ``history`` [(question, answer), ...], ending with the
    open assistant turn ``<|im_start|>assistant\\n``."""
    text = chatml_turn("system", system_message) if system_message else ""
    for old_question, old_answer in history or []:
        text += chatml_turn("user", old_question) + chatml_turn("assistant", old_answer)
    return text + chatml_turn("user", question) + f"{IM_START}assistant\n"
