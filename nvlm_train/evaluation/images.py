"""Images as benchmark files store them: a path (relative to the data file's folder or an image
folder), base64 text (VLMEvalKit TSVs), raw bytes, or a ``{"bytes": .., "path": ..}`` struct (HF
parquet releases). Checked when read (header only), decoded when asked."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from nvlm_train.data.errors import SampleError
from nvlm_train.data.images import decode_image, open_image

IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg", ".webp", ".gif", ".bmp")


class ImageError(ValueError):
    """An image field that cannot be decoded (the record is skipped and counted)."""


def _decoded(data: bytes, where: str) -> Image.Image:
    """RGB pixels through the data pipeline's bounded decoder (``data.images``: size limit, card's convert)."""
    try:
        return decode_image(data)
    except SampleError as exc:
        raise ImageError(f"{where}: {exc.reason}: {exc.message}") from None


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


def _header_ok(data: bytes) -> None:
    try:
        open_image(data)  # the header only, with the pipeline's pixel limit
    except SampleError as exc:
        raise ImageError(f"image bytes ({len(data)} bytes): {exc.reason}: {exc.message}") from None


@dataclass(frozen=True)
class LazyImage:
    """An image checked (header only) when read and decoded only when asked: a benchmark of thousands
    of images never sits decoded in memory. ``source`` is bytes, a file path or a PIL image."""

    source: Any

    def load(self) -> Image.Image:
        if isinstance(self.source, Image.Image):
            return self.source.convert("RGB")
        if isinstance(self.source, Path):
            return _decoded(self.source.read_bytes(), str(self.source))
        return _decoded(self.source, f"image bytes ({len(self.source)} bytes)")


def lazy_image(value: Any, roots: list[Path]) -> LazyImage:
    """Resolve a stored image field (as ``decode_image`` does) without decoding the pixels."""
    if isinstance(value, Image.Image):
        return LazyImage(value)
    if isinstance(value, dict):
        if value.get("bytes"):
            return lazy_image(bytes(value["bytes"]), roots)
        if value.get("path"):
            return lazy_image(value["path"], roots)
        raise ImageError("image struct has neither bytes nor path")
    if isinstance(value, (bytes, bytearray)):
        _header_ok(bytes(value))
        return LazyImage(bytes(value))
    if not isinstance(value, str) or not value.strip():
        raise ImageError(f"no image in field (got {type(value).__name__})")
    text = value.strip()
    if len(text) < 1024:
        found = Path(text) if Path(text).is_file() else _find(text, roots)
        if found is not None:
            try:
                with Image.open(found) as img:  # the header only
                    img.size  # noqa: B018
            except Exception as exc:  # noqa: BLE001
                raise ImageError(f"{found}: not a readable image: {exc}") from exc
            return LazyImage(found)
        if Path(text).suffix.lower() in IMAGE_SUFFIXES or "/" in text:
            raise ImageError(f"image file {text!r} not found under {', '.join(str(r) for r in roots)}")
    try:
        data = base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"image field is neither base64 nor a file name: {text[:60]!r}") from exc
    _header_ok(data)
    return LazyImage(data)
