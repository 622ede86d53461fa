"""A re-creation of the NVLM-D model card's image preprocessing, used only as a test/bench oracle.

Written from the card's documented semantics: PIL resizes with the default filter, crops row-major,
a thumbnail of the whole image, then per tile torchvision's ``Resize((S, S), BICUBIC)`` (a no-op on an
S x S crop), ``ToTensor`` (uint8 -> float / 255, HWC -> CHW) and ``Normalize`` (ImageNet mean/std).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

MEAN = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1)
STD = torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)


def card_grid(width: int, height: int, min_num: int, max_num: int, image_size: int) -> tuple[int, int]:
    ratios = {
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if i * j <= max_num and i * j >= min_num
    }
    ratios = sorted(ratios, key=lambda x: x[0] * x[1])
    aspect = width / height
    best_diff, best = float("inf"), (1, 1)
    for r in ratios:
        diff = abs(aspect - r[0] / r[1])
        if diff < best_diff:
            best_diff, best = diff, r
        elif diff == best_diff and width * height > 0.5 * image_size * image_size * r[0] * r[1]:
            best = r
    return best


def card_tiles(image: Image.Image, max_num: int, image_size: int, use_thumbnail: bool) -> list[Image.Image]:
    cols, rows = card_grid(image.size[0], image.size[1], 1, max_num, image_size)
    resized = image.resize((image_size * cols, image_size * rows))
    out = []
    for i in range(cols * rows):
        box = ((i % cols) * image_size, (i // cols) * image_size,
               (i % cols + 1) * image_size, (i // cols + 1) * image_size)
        out.append(resized.crop(box))
    if use_thumbnail and len(out) != 1:
        out.append(image.resize((image_size, image_size)))
    return out


def card_transform(tile: Image.Image, input_size: int) -> torch.Tensor:
    """torchvision's Lambda(convert) -> Resize((S, S), BICUBIC) -> ToTensor -> Normalize, op for op."""
    tile = tile.convert("RGB") if tile.mode != "RGB" else tile
    tile = tile.resize((input_size, input_size), Image.Resampling.BICUBIC)  # PIL copies when the size is equal
    x = torch.from_numpy(np.array(tile, dtype=np.uint8, copy=True))  # ToTensor
    x = x.permute(2, 0, 1).contiguous().to(dtype=torch.float32).div(255)
    x = x.clone()  # Normalize(inplace=False)
    return x.sub_(MEAN).div_(STD)


def card_load_image(image: Image.Image, input_size: int = 448, max_num: int = 12) -> torch.Tensor:
    image = image.convert("RGB")
    tiles = card_tiles(image, max_num, input_size, use_thumbnail=True)
    return torch.stack([card_transform(t, input_size) for t in tiles])
