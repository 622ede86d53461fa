"""Conversation -> token ids, assistant-target flags and normalised tiles, within the token budget.

Budget (issue 3): a sample that does not fit ``seq_length`` is retried with fewer tiles per image
(``max_tiles`` -> 8 -> 6 -> 4 -> 2 -> 1, the budget split between images), then dropped as
``too_long``. Tile counts come from image sizes alone, so pixels are decoded once, after the choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nvlm_train.data.device_tiles import plan_image, plan_tiles
from nvlm_train.data.errors import NO_ASSISTANT_REPLY, SPECIAL_TOKEN_IN_TEXT, TOO_LONG, SampleError
from nvlm_train.data.images import DEFAULT_MAX_PIXELS, open_image, to_rgb
from nvlm_train.data.prompt import DEFAULT_PROMPT_FORMAT, SPECIAL_TOKENS, build_segments
from nvlm_train.data.samples import Conversation
from nvlm_train.data.tiling import num_tiles, pixels_tensor, tile_image_uint8
from nvlm_train.data.tokenizer import TextTokenizer

TILE_LADDER = (8, 6, 4, 2, 1)


@dataclass(frozen=True)
class EncodeOptions:
    seq_length: int
    tokens_per_tile: int = 256
    image_size: int = 448
    max_tiles: int = 12
    use_thumbnail: bool = True
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    tile_on_device: bool = False  # ship decoded images + plans; the device cuts tiles (device_tiles)
    prompt_format: str = DEFAULT_PROMPT_FORMAT  # a preset of ``hf.conversation.PROMPT_FORMATS``
    system: str | None = None  # system text of samples that bring none (None: no system turn)


@dataclass
class EncodedSample:
    """One sample ready for packing. ``targets[i]`` is True where token i is assistant-reply text."""

    tokens: np.ndarray  # int64 [L]
    targets: np.ndarray  # bool [L]
    pixel_values: torch.Tensor  # uint8 [num_tiles, 3, S, S]; the model normalises (tiling.normalize_pixels)
    tiles_per_image: tuple[int, ...] = ()
    # Device route (``EncodeOptions.tile_on_device``): ``pixel_values`` is empty and these hold each
    # image's RGB pixels (uint8 [H, W, 3]) and its ``device_tiles.plan_image`` row instead.
    images: tuple[torch.Tensor, ...] = ()
    plans: tuple[tuple[int, ...], ...] = ()

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def tile_budgets(max_tiles: int) -> list[int]:
    """Budgets tried in order: ``max_tiles`` then each smaller ladder step."""
    return [max_tiles] + [b for b in TILE_LADDER if b < max_tiles]


def tokenize_segments(segments, tok: TextTokenizer) -> tuple[np.ndarray, np.ndarray]:
    ids: list[int] = []
    flags: list[bool] = []
    for seg in segments:
        part = tok.encode(seg.text)
        ids.extend(part)
        flags.extend([seg.target] * len(part))
    return np.asarray(ids, dtype=np.int64), np.asarray(flags, dtype=bool)


def encode_conversation(conv: Conversation, tok: TextTokenizer, opts: EncodeOptions) -> EncodedSample:
    """Format, tokenise and tile one conversation; raises ``SampleError`` if it cannot be used."""
    texts = [t for _, t in conv.messages] + ([conv.system] if conv.system else [])
    for t in texts:
        for special in SPECIAL_TOKENS:
            if special in t:
                raise SampleError(SPECIAL_TOKEN_IN_TEXT, f"text contains {special}")
    images = [open_image(b, opts.max_image_pixels) for b in conv.images]
    system = conv.system if conv.system is not None else opts.system
    chosen = None
    for budget in tile_budgets(opts.max_tiles) if images else [0]:
        per_image = max(1, budget // max(1, len(images)))
        tiles = tuple(num_tiles(*im.size, max_num=per_image, image_size=opts.image_size,
                                use_thumbnail=opts.use_thumbnail) for im in images)
        segments = build_segments(conv.messages, tiles, opts.tokens_per_tile, system=system, fmt=opts.prompt_format)
        tokens, targets = tokenize_segments(segments, tok)
        if len(tokens) <= opts.seq_length:
            chosen = (per_image, tiles, tokens, targets)
            break
    if chosen is None:
        raise SampleError(TOO_LONG, f"{len(tokens)} tokens with the smallest tile budget > seq_length "
                                    f"{opts.seq_length}")
    per_image, tiles, tokens, targets = chosen
    if not targets.any():
        raise SampleError(NO_ASSISTANT_REPLY, "no assistant tokens after tokenisation")
    n_ctx = int((tokens == tok.image_context_id).sum())
    if n_ctx != sum(tiles) * opts.tokens_per_tile:
        raise SampleError(SPECIAL_TOKEN_IN_TEXT, f"{n_ctx} image-context tokens for {sum(tiles)} tiles")
    s = opts.image_size
    empty = torch.zeros((0, 3, s, s), dtype=torch.uint8)
    rgb = [to_rgb(im) for im in images]
    if opts.tile_on_device:
        plans = tuple(plan_image(*im.size, per_image, s, opts.use_thumbnail) for im in rgb)
        assert tuple(plan_tiles(p) for p in plans) == tiles, (plans, tiles)
        return EncodedSample(tokens=tokens, targets=targets, pixel_values=empty, tiles_per_image=tiles,
                             images=tuple(pixels_tensor(im) for im in rgb), plans=plans)
    pixels = []
    for im, n in zip(rgb, tiles):
        t = tile_image_uint8(im, max_num=per_image, image_size=s, use_thumbnail=opts.use_thumbnail)
        assert t.shape[0] == n, (t.shape, n)
        pixels.append(t)
    pv = torch.cat(pixels) if pixels else empty
    return EncodedSample(tokens=tokens, targets=targets, pixel_values=pv, tiles_per_image=tiles)


def encode_prompt(
    messages: list[tuple[str, str]],
    images: list,
    tok: TextTokenizer,
    tokens_per_tile: int,
    image_size: int = 448,
    max_tiles: int = 6,
    system: str | None = None,
    prompt_format: str = DEFAULT_PROMPT_FORMAT,
) -> tuple[np.ndarray, torch.Tensor]:
    """Inference/evaluation input: prompt tokens ending in ``<|im_start|>assistant\\n`` and the tiles.

    ``images`` are PIL images (any mode) in placeholder order; layout and tiling are the training ones
    (each image gets ``max_tiles`` tiles at most, plus the thumbnail), without the token budget.
    """
    rgb = [to_rgb(im) for im in images]
    pixels = [tile_image_uint8(im, max_num=max_tiles, image_size=image_size) for im in rgb]
    tiles = [p.shape[0] for p in pixels]
    segments = build_segments(messages, tiles, tokens_per_tile, system=system, add_generation_prompt=True,
                              fmt=prompt_format)
    tokens, _ = tokenize_segments(segments, tok)
    pv = torch.cat(pixels) if pixels else torch.zeros((0, 3, image_size, image_size), dtype=torch.uint8)
    return tokens, pv
