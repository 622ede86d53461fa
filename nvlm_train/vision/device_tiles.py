"""Tiles cut on the training device: workers ship decoded images, the GPU resizes and cuts them.

The route for GPU hosts (``data.tile_on=device``): a data worker only decodes (and tokenises), then
ships the RGB bytes and a plan per image; ``cut_on_device`` does the card's two bicubic resizes
with ``resample.resize_many`` (Pillow's arithmetic, bit for bit) and the row-major cut, so the model gets
the same uint8 tiles as the worker route (``tiling.tile_image_uint8``) and hence the card's numbers.

Batch keys of this route (instead of ``pixel_values``): ``images`` uint8 [sum of H*W*3] (each image
HWC, concatenated in image-run order) and ``image_plans`` int64 [n_images, 6] (PLAN_FIELDS).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from nvlm_train.vision import resample
from nvlm_train.vision.tiling import cut_tiles, tile_grid

PLAN_FIELDS = ("height", "width", "cols", "rows", "thumbnail", "tile_size")


def plan_image(width: int, height: int, max_num: int, image_size: int, use_thumbnail: bool) -> tuple[int, ...]:
    """The plan row for one image: its size, the card's grid for it, thumbnail flag, tile size."""
    cols, rows = tile_grid(width, height, 1, max_num, image_size)
    thumb = int(use_thumbnail and cols * rows != 1)
    return (height, width, cols, rows, thumb, image_size)


def plan_tiles(plan: Sequence[int]) -> int:
    _, _, cols, rows, thumb, _ = plan
    return cols * rows + thumb


def pack_images(images: Sequence[torch.Tensor], plans: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [H, W, 3] images + their plans -> the batch's (``images``, ``image_plans``) tensors."""
    for im, p in zip(images, plans, strict=True):
        if im.dtype != torch.uint8 or tuple(im.shape) != (p[0], p[1], 3):
            raise ValueError(f"image {im.dtype} {tuple(im.shape)} does not match its plan {tuple(p)}")
    flat = torch.cat([im.reshape(-1) for im in images]) if images else torch.zeros(0, dtype=torch.uint8)
    return flat, torch.tensor([list(p) for p in plans], dtype=torch.int64).reshape(-1, len(PLAN_FIELDS))


def cut_on_device(images: torch.Tensor, plans: torch.Tensor | Sequence[Sequence[int]]) -> torch.Tensor:
    """-> uint8 [tiles, 3, S, S] on ``images``' device, equal to ``tile_image_uint8`` of each image.

    ``plans`` may stay on the CPU (a [n, 6] tensor or rows) so reading them needs no device sync.
    """
    rows_of_plans = plans.tolist() if torch.is_tensor(plans) else [list(p) for p in plans]
    if not rows_of_plans:
        raise ValueError("cut_on_device needs at least one image")
    views, sizes, offset = [], [], 0
    for h, w, cols, rows, thumb, s in rows_of_plans:
        img = images[offset:offset + h * w * 3].view(h, w, 3)  # [H, W, 3]
        offset += h * w * 3
        views += [img, img] if thumb else [img]
        sizes += [(s * cols, s * rows), (s, s)] if thumb else [(s * cols, s * rows)]
    if offset != images.numel():
        raise ValueError(f"image_plans describe {offset} bytes but images holds {images.numel()}")
    resized = iter(resample.resize_many(views, sizes))  # grids [rows*S, cols*S, 3] and thumbnails [S, S, 3]
    out = [cut_tiles(next(resized), next(resized) if thumb else None, cols, rows, s)
           for _, _, cols, rows, thumb, s in rows_of_plans]
    return torch.cat(out) if len(out) > 1 else out[0]
