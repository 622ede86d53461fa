"""NVLM-D dynamic tiling (the model card's ``dynamic_preprocess``/``load_image``) without torchvision.

Three routes produce the same numbers:

* ``dynamic_preprocess``/``load_image``: the card's public API (PIL tiles, then a float tensor).
* ``tile_image_uint8``: the worker route. The same two PIL resizes, then the tiles are cut out of the
  resized arrays in one strided copy (``cut_tiles``); the model normalises them (``normalize_pixels``).
* ``device_tiles.cut_on_device``: the GPU route. Workers only decode; the device does the two
  resizes with Pillow's arithmetic (``resample``) and the same cut.

Normalisation does torchvision's ``ToTensor`` (``x / 255``) and ``Normalize`` (``(x - mean) / std``)
float32 operations in the same order, so the values are bit-identical to the card's.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Tiles per image (plus the thumbnail) unless a run or benchmark says otherwise: what the card's
# snippet asks for (``load_image(..., max_num=6)``) and the released ``max_dynamic_patch``. The
# card's functions below keep their own signature defaults (12), as written in the card.
DEFAULT_MAX_TILES = 6


@functools.lru_cache(maxsize=64)
def target_ratios(min_num: int, max_num: int) -> tuple[tuple[int, int], ...]:
    """All (cols, rows) grids with min_num <= cols*rows <= max_num, ordered by tile count (stable)."""
    grids = {
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_num <= i * j <= max_num
    }
    # Sorted exactly as the card does (a stable sort of the set by area): the order among grids of
    # equal area is the set's iteration order, which is deterministic for tuples of small ints.
    return tuple(sorted(grids, key=lambda r: r[0] * r[1]))


def find_closest_aspect_ratio(
    aspect_ratio: float, ratios: tuple[tuple[int, int], ...], width: int, height: int, image_size: int
) -> tuple[int, int]:
    """The grid whose aspect ratio is closest; on a tie the later (larger) grid if the image is big enough."""
    best_diff = float("inf")
    best = (1, 1)
    area = width * height
    for ratio in ratios:
        diff = abs(aspect_ratio - ratio[0] / ratio[1])
        if diff < best_diff:
            best_diff = diff
            best = ratio
        elif diff == best_diff and area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
            best = ratio
    return best


def tile_grid(width: int, height: int, min_num: int = 1, max_num: int = 12, image_size: int = 448) -> tuple[int, int]:
    """(cols, rows) the card would choose for an image of this size; needs no pixels."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image has no pixels: {width}x{height}")
    return find_closest_aspect_ratio(width / height, target_ratios(min_num, max_num), width, height, image_size)


def num_tiles(width: int, height: int, max_num: int = 12, image_size: int = 448, use_thumbnail: bool = True) -> int:
    """How many tiles (thumbnail included) ``tile_image`` yields for an image of this size."""
    cols, rows = tile_grid(width, height, 1, max_num, image_size)
    blocks = cols * rows
    return blocks + 1 if use_thumbnail and blocks != 1 else blocks


def dynamic_preprocess(
    image: Image.Image, min_num: int = 1, max_num: int = 12, image_size: int = 448, use_thumbnail: bool = False
) -> list[Image.Image]:
    """The card's tiler: resize to the chosen grid, crop row-major, optionally append a thumbnail."""
    cols, rows = tile_grid(image.size[0], image.size[1], min_num, max_num, image_size)
    resized = image.resize((image_size * cols, image_size * rows))
    tiles = []
    for i in range(cols * rows):
        x, y = (i % cols) * image_size, (i // cols) * image_size
        tiles.append(resized.crop((x, y, x + image_size, y + image_size)))
    if use_thumbnail and len(tiles) != 1:
        tiles.append(image.resize((image_size, image_size)))
    return tiles


_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
_STD = np.asarray(IMAGENET_STD, dtype=np.float32).reshape(1, 3, 1, 1)


def normalize_(out: np.ndarray) -> np.ndarray:
    """In place on float32 [n, 3, H, W] holding 0..255: ``(x / 255 - mean) / std`` in float32.

    The same IEEE float32 operations, in the same order, as torchvision's ToTensor + Normalize,
    so results are bit-identical (tests check all 256 values of every channel).
    """
    np.divide(out, np.float32(255), out=out)
    np.subtract(out, _MEAN, out=out)
    np.divide(out, _STD, out=out)
    return out


@functools.cache
def _normalised_values() -> torch.Tensor:
    """float32 [3, 256]: every uint8 value of every channel through ToTensor + Normalize, on the CPU."""
    values = np.broadcast_to(np.arange(256, dtype=np.float32), (1, 3, 1, 256)).copy()
    return torch.from_numpy(normalize_(values)).view(3, 256)


def normalize_pixels(tiles: torch.Tensor) -> torch.Tensor:
    """uint8 [n, 3, H, W] -> float32 ImageNet-normalised tiles, on whatever device ``tiles`` is.

    A lookup into the 768 values torchvision's ToTensor + Normalize give on the CPU (IEEE float32,
    same op order), so the result is bit-identical to the card's on any device: computing it there
    instead could differ in the last bit (CUDA divides by 255 as a multiply by its reciprocal).
    The model calls it on uint8 batches: the data workers never touch floats.
    """
    if tiles.dtype != torch.uint8:
        raise TypeError(f"normalize_pixels takes uint8 tiles, got {tiles.dtype}")
    table = _normalised_values().to(tiles.device)
    out = torch.empty(tiles.shape, dtype=torch.float32, device=tiles.device)
    for c in range(3):  # one channel at a time keeps the int32 index temporary to a third of the batch
        out[:, c] = table[c][tiles[:, c].int()]
    return out


def _grid_and_thumb(image: Image.Image, max_num: int, image_size: int, use_thumbnail: bool):
    s = image_size
    cols, rows = tile_grid(image.size[0], image.size[1], 1, max_num, s)
    grid = np.asarray(image.resize((s * cols, s * rows)))
    thumb = np.asarray(image.resize((s, s))) if use_thumbnail and cols * rows != 1 else None
    return cols, rows, grid, thumb


def pixels_tensor(image: Image.Image | np.ndarray) -> torch.Tensor:
    """uint8 [H, W, C] tensor over an RGB image's bytes without another copy. Read-only: never write to it."""
    arr = np.asarray(image)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(arr)


def cut_tiles(grid: torch.Tensor, thumb: torch.Tensor | None, cols: int, rows: int, image_size: int) -> torch.Tensor:
    """uint8 [rows*S, cols*S, 3] grid (+ [S, S, 3] thumbnail) -> uint8 [n, 3, S, S] tiles, row-major.

    One strided copy per part, on the grid's device: no per-tile crops.
    """
    s = image_size
    blocks = cols * rows
    out = torch.empty((blocks + (thumb is not None), 3, s, s), dtype=torch.uint8, device=grid.device)
    out[:blocks].view(rows, cols, 3, s, s).copy_(grid.view(rows, s, cols, s, 3).permute(0, 2, 4, 1, 3))
    if thumb is not None:
        out[blocks].copy_(thumb.permute(2, 0, 1))
    return out


def tile_image_uint8(
    image: Image.Image, max_num: int = 12, image_size: int = 448, use_thumbnail: bool = True
) -> torch.Tensor:
    """Worker route: the same tiles as ``dynamic_preprocess`` as one uint8 [n, 3, S, S] tensor.

    The card's two PIL resizes (grid and thumbnail, same filter), then ``cut_tiles``: no PIL crops,
    no per-tile tensors, no floats (``normalize_pixels`` on the device gives exactly the card's
    ``load_image`` numbers). ``device_tiles`` does the same resizes on the GPU. ``image`` must be RGB.
    """
    cols, rows, grid, thumb = _grid_and_thumb(image, max_num, image_size, use_thumbnail)
    return cut_tiles(pixels_tensor(grid), None if thumb is None else pixels_tensor(thumb), cols, rows, image_size)


def tile_image(
    image: Image.Image, max_num: int = 12, image_size: int = 448, use_thumbnail: bool = True
) -> torch.Tensor:
    """float32 [n, 3, S, S] normalised tiles, equal to the card's ``load_image`` output.

    The two resizes of ``tile_image_uint8``, then one strided copy straight into the CHW float output
    and an in-place normalisation. ``image`` must be RGB.
    """
    s = image_size
    cols, rows, grid, thumb = _grid_and_thumb(image, max_num, s, use_thumbnail)
    blocks = cols * rows
    out = np.empty((blocks + (thumb is not None), 3, s, s), dtype=np.float32)
    np.copyto(out[:blocks].reshape(rows, cols, 3, s, s), grid.reshape(rows, s, cols, s, 3).transpose(0, 2, 4, 1, 3),
              casting="unsafe")
    if thumb is not None:
        np.copyto(out[blocks], thumb.transpose(2, 0, 1), casting="unsafe")
    return torch.from_numpy(normalize_(out))


def load_image(image: str | os.PathLike | Image.Image, input_size: int = 448, max_num: int = 12) -> torch.Tensor:
    """The card's ``load_image`` (thumbnail on), accepting a path or a PIL image."""
    if isinstance(image, (str, os.PathLike, Path)):
        with Image.open(image) as img:
            rgb = img.convert("RGB")
    else:
        rgb = image.convert("RGB") if image.mode != "RGB" else image
    return tile_image(rgb, max_num=max_num, image_size=input_size, use_thumbnail=True)
