"""Conversation -> token ids, assistant-target flags and normalised tiles, within the token budget.

Budget: a sample that does not fit ``seq_length`` is retried with fewer tiles per image
(``max_tiles`` -> 8 -> 6 -> 4 -> 2 -> 1, the budget split between images), then dropped as
``too_long``. Tile counts come from image sizes alone, so pixels are decoded once, after the choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nvlm_train.data.errors import NO_ASSISTANT_REPLY, SPECIAL_TOKEN_IN_TEXT, TOO_LONG, SampleError
from nvlm_train.data.images import DEFAULT_MAX_PIXELS, open_image, to_rgb
from nvlm_train.data.prompt import DEFAULT_PROMPT_FORMAT, SPECIAL_TOKENS, build_segments
from nvlm_train.data.samples import Conversation
from nvlm_train.data.tokenizer import TextTokenizer
from nvlm_train.vision.route import ImageTiles, TileRoute
from nvlm_train.vision.tiling import num_tiles

TILE_LADDER = (8, 6, 4, 2, 1)


@dataclass(frozen=True)
class EncodeOptions:
    """How samples are encoded. ``tokens_per_tile`` and ``image_size`` derive from the model
    (``ModelConfig.tokens_per_tile``, ``model.vision.image_size``) and ``max_tiles`` from
    ``data.max_tiles``: they have no defaults here, so they cannot drift from the run's."""

    seq_length: int
    tokens_per_tile: int
    image_size: int
    max_tiles: int
    use_thumbnail: bool = True
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    route: TileRoute = TileRoute.WORKER
    prompt_format: str = DEFAULT_PROMPT_FORMAT  # a preset of ``hf.conversation.PROMPT_FORMATS``
    system: str | None = None  # system text of samples that bring none (None: no system turn)


@dataclass
class EncodedSample:
    """One sample ready for packing. ``targets[i]`` is True where token i is assistant-reply text."""

    tokens: np.ndarray  # int64 [L]
    targets: np.ndarray  # bool [L]
    tiles: ImageTiles  # its images, in the form its tile route ships them

    @property
    def tiles_per_image(self) -> tuple[int, ...]:
        return self.tiles.tiles_per_image

    @property
    def pixel_values(self) -> torch.Tensor | None:
        """uint8 [num_tiles, 3, S, S] on the worker route (the model normalises them); None on the device route."""
        return self.tiles.pixel_values

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


def check_no_special_tokens(texts) -> None:
    """Raw text must not spell a special token (it would tokenise as the control token)."""
    for t in texts:
        for special in SPECIAL_TOKENS:
            if special in t:
                raise SampleError(SPECIAL_TOKEN_IN_TEXT, f"text contains {special}")


def encode_conversation(conv: Conversation, tok: TextTokenizer, opts: EncodeOptions) -> EncodedSample:
    """Format, tokenise and tile one conversation; raises ``SampleError`` if it cannot be used."""
    check_no_special_tokens([t for _, t in conv.messages] + ([conv.system] if conv.system else []))
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
    payload = ImageTiles.cut(opts.route, [to_rgb(im) for im in images], per_image, opts.image_size,
                             opts.use_thumbnail)
    assert payload.tiles_per_image == tiles, (payload.tiles_per_image, tiles)
    return EncodedSample(tokens=tokens, targets=targets, tiles=payload)


def encode_prompt(
    messages: list[tuple[str, str]],
    images: list,
    tok: TextTokenizer,
    tokens_per_tile: int,
    image_size: int,
    max_tiles: int,
    system: str | None = None,
    prompt_format: str = DEFAULT_PROMPT_FORMAT,
) -> tuple[np.ndarray, torch.Tensor]:
    """Inference/evaluation input: prompt tokens ending in ``<|im_start|>assistant\\n`` and the tiles.

    ``images`` are PIL images (any mode) in placeholder order; layout and tiling are the training ones
    (each image gets ``max_tiles`` tiles at most, plus the thumbnail), without the token budget.
    Raises SampleError (``special_token_in_text``) for text that spells a special token.
    """
    check_no_special_tokens([t for _, t in messages] + ([system] if system else []))
    payload = ImageTiles.cut(TileRoute.WORKER, [to_rgb(im) for im in images], max_tiles, image_size, True)
    segments = build_segments(messages, payload.tiles_per_image, tokens_per_tile, system=system,
                              add_generation_prompt=True, fmt=prompt_format)
    tokens, _ = tokenize_segments(segments, tok)
    return tokens, payload.pixel_values
