"""Images as benchmark files store them: a path (relative to the data file's folder or an image
folder), base64 text (VLMEvalKit TSVs), raw bytes, or a ``{"bytes": .., "path": ..}`` struct (HF
parquet releases)."""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path
from typing import Any

from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg", ".webp", ".gif", ".bmp")


class ImageError(ValueError):
    """An image field that cannot be decoded (the record is skipped and counted)."""


def _open_bytes(data: bytes) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad data
        raise ImageError(f"undecodable image bytes ({len(data)} bytes): {exc}") from exc


def _find(name: str, roots: list[Path]) -> Path | None:
    for root in roots:
        path = root / name
        if path.is_file():
            return path
        for suffix in IMAGE_SUFFIXES:  # some releases name images without their suffix
            if path.with_name(path.name + suffix).is_file():
                return path.with_name(path.name + suffix)
        if (root / Path(name).name).is_file():
            return root / Path(name).name
    return None


def decode_image(value: Any, roots: list[Path]) -> Image.Image:
    """An RGB PIL image from any of the stored forms."""
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, dict):
        if value.get("bytes"):
            return _open_bytes(value["bytes"])
        if value.get("path"):
            return decode_image(value["path"], roots)
        raise ImageError("image struct has neither bytes nor path")
    if isinstance(value, (bytes, bytearray)):
        return _open_bytes(bytes(value))
    if not isinstance(value, str) or not value.strip():
        raise ImageError(f"no image in field (got {type(value).__name__})")
    text = value.strip()
    if len(text) < 1024 and (Path(text).suffix.lower() in IMAGE_SUFFIXES or "/" in text or Path(text).is_file()):
        found = Path(text) if Path(text).is_file() else _find(text, roots)
        if found is None:
            raise ImageError(f"image file {text!r} not found under {', '.join(str(r) for r in roots)}")
        with Image.open(found) as img:
            return img.convert("RGB")
    try:
        return _open_bytes(base64.b64decode(text, validate=False))
    except (binascii.Error, ValueError) as exc:
        found = _find(text, roots)
        if found is not None:
            with Image.open(found) as img:
                return img.convert("RGB")
        raise ImageError(f"image field is neither base64 nor a file name: {text[:60]!r}") from exc
