"""Decoding untrusted image bytes: lazily (size first, for the token budget), bounded, always to RGB."""

from __future__ import annotations

import io
import warnings

from PIL import Image

from nvlm_train.config.limits import DEFAULT_MAX_PIXELS
from nvlm_train.data.errors import CORRUPT_IMAGE, DECOMPRESSION_BOMB, SampleError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Parse the header only; rejects images above ``max_pixels`` before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise SampleError(DECOMPRESSION_BOMB, str(e)) from None
    except Exception as e:  # PIL raises many types for garbage input
        raise SampleError(CORRUPT_IMAGE, f"{type(e).__name__}: {e}") from None
    w, h = img.size
    if w < 1 or h < 1:
        raise SampleError(CORRUPT_IMAGE, f"image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise SampleError(DECOMPRESSION_BOMB, f"{w}x{h} exceeds max_pixels={max_pixels}")
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Decode fully and ``.convert('RGB')`` as the model card does (palette, RGBA, CMYK, L, 16-bit...)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Palette images with Transparency ..." is expected
            img.load()
            return img.convert("RGB") if img.mode != "RGB" else img
    except Exception as e:
        raise SampleError(CORRUPT_IMAGE, f"{type(e).__name__}: {e}") from None


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    return to_rgb(open_image(data, max_pixels))
