"""Human view of one sample (``nvlm-data inspect``): its conversation, token view and a tile contact sheet."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nvlm_train.data.encode import EncodedSample
from nvlm_train.data.tokenizer import TextTokenizer
from nvlm_train.vision.tiling import IMAGENET_MEAN, IMAGENET_STD


def token_view(sample: EncodedSample, tok: TextTokenizer) -> str:
    """Decoded text with runs of image-context tokens abbreviated and assistant targets in [[...]]."""
    out = []
    for (tid, target), grp in itertools.groupby(zip(sample.tokens.tolist(), sample.targets.tolist())):
        n = len(list(grp))
        if tid == tok.image_context_id:
            out.append(f"<|vision_pad|>x{n}")
            continue
        text = tok.decode([tid] * n)
        out.append(f"[[{text}]]" if target else text)
    view = "".join(out)
    return view.replace("]][[", "")


def contact_sheet(pixel_values: torch.Tensor, columns: int = 8, gap: int = 4) -> Image.Image:
    """Tiles [n, 3, S, S] (uint8, or normalised floats) as one RGB image, row-major with a grey gap."""
    n, _, s, _ = pixel_values.shape
    if pixel_values.dtype != torch.uint8:
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        pixel_values = ((pixel_values * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)
    tiles = pixel_values.permute(0, 2, 3, 1).numpy()
    cols = max(1, min(columns, n))
    rows = max(1, -(-n // cols))
    sheet = np.full((rows * (s + gap) + gap, cols * (s + gap) + gap, 3), 128, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = gap + r * (s + gap), gap + c * (s + gap)
        sheet[y:y + s, x:x + s] = tiles[i]
    return Image.fromarray(sheet)


def save_contact_sheet(pixel_values: torch.Tensor, path: str | Path) -> Path | None:
    if pixel_values.shape[0] == 0:
        return None
    path = Path(path)
    contact_sheet(pixel_values).save(path)
    return path
