"""The tile route: where a sample's images become tiles, and the one place that branches on it.

``data.tile_on`` picks a ``TileRoute``:

* ``WORKER``: the data workers cut uint8 tiles with PIL (``tiling.tile_image_uint8``); batches
  carry ``pixel_values`` uint8 [tiles, 3, S, S].
* ``DEVICE``: the workers only decode; batches carry each image's RGB bytes and tiling plan
  (``images``, ``image_plans``) and the training device cuts the same tiles
  (``device_tiles.cut_on_device``, Pillow's resize arithmetic bit for bit).

``ImageTiles`` is one sample's images in its route's form; ``collate_tiles`` makes the batch keys,
``batch_tiles`` counts tiles on the host and ``batch_pixels`` gives the model its ``pixel_values``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import torch

from nvlm_train.vision import resample
from nvlm_train.vision.device_tiles import cut_on_device, pack_images, plan_image, plan_tiles
from nvlm_train.vision.tiling import pixels_tensor, tile_image_uint8

# Batch keys that carry images (either route); only the first pipeline stage needs them.
IMAGE_KEYS = ("pixel_values", "images", "image_plans")


class TileOn(StrEnum):
    """``data.tile_on``: where tiles are cut; auto = on the device when training on a GPU."""

    auto = "auto"
    worker = "worker"
    device = "device"


class TileRoute(StrEnum):
    WORKER = "worker"
    DEVICE = "device"

    @classmethod
    def resolve(cls, tile_on: str, on_cuda: bool) -> TileRoute:
        """``data.tile_on`` -> the route: ``auto`` cuts on the GPU when training on one (and Pillow's
        arithmetic can be reproduced), else in the workers. Raises ValueError saying what to change."""
        if tile_on not in list(TileOn):
            raise ValueError(f"data.tile_on={tile_on!r}: use auto, worker or device")
        if tile_on == "device" and not resample.pillow_supported():
            raise ValueError(
                f"data.tile_on=device reproduces Pillow>={'.'.join(map(str, resample.MIN_PILLOW))}'s resize but "
                f"Pillow {'.'.join(map(str, resample.pillow_version()))} is installed; upgrade Pillow or set "
                f"data.tile_on=worker")
        if tile_on == "auto":
            return cls.DEVICE if on_cuda and resample.pillow_supported() else cls.WORKER
        return cls(tile_on)

    def describe(self) -> str:
        return "on the device" if self is TileRoute.DEVICE else "by the data workers"


@dataclass(frozen=True)
class ImageTiles:
    """One sample's images as its route ships them (``tiles_per_image`` is the same for both)."""

    route: TileRoute
    tiles_per_image: tuple[int, ...] = ()
    pixel_values: torch.Tensor | None = None  # WORKER: uint8 [tiles, 3, S, S]
    images: tuple[torch.Tensor, ...] = ()  # DEVICE: uint8 [H, W, 3] each
    plans: tuple[tuple[int, ...], ...] = field(default=())  # DEVICE: a ``device_tiles.plan_image`` row each

    @classmethod
    def cut(cls, route: TileRoute, rgb_images: Sequence, per_image: int, image_size: int,
            use_thumbnail: bool) -> ImageTiles:
        """RGB PIL images -> this route's payload, each with at most ``per_image`` tiles (+ thumbnail)."""
        if route is TileRoute.DEVICE:
            plans = tuple(plan_image(*im.size, per_image, image_size, use_thumbnail) for im in rgb_images)
            return cls(route, tuple(plan_tiles(p) for p in plans), images=tuple(pixels_tensor(im) for im in rgb_images),
                       plans=plans)
        tiles = [tile_image_uint8(im, max_num=per_image, image_size=image_size, use_thumbnail=use_thumbnail)
                 for im in rgb_images]
        pixels = torch.cat(tiles) if tiles else torch.zeros((0, 3, image_size, image_size), dtype=torch.uint8)
        return cls(route, tuple(t.shape[0] for t in tiles), pixel_values=pixels)

    @property
    def num_tiles(self) -> int:
        return sum(self.tiles_per_image)


def collate_tiles(items: Sequence[ImageTiles], route: TileRoute, image_size: int) -> dict[str, torch.Tensor]:
    """The image keys of a batch from its samples' payloads (image-run order)."""
    if any(it.route is not route for it in items):
        raise ValueError(f"a batch mixes samples of the {TileRoute.WORKER.value} and {TileRoute.DEVICE.value} "
                         "tile routes")
    if route is TileRoute.DEVICE:
        images, plans = pack_images([im for it in items for im in it.images], [p for it in items for p in it.plans])
        return {"images": images, "image_plans": plans}
    pixels = [it.pixel_values for it in items if it.pixel_values is not None and it.pixel_values.shape[0]]
    empty = torch.zeros((0, 3, image_size, image_size), dtype=torch.uint8)
    return {"pixel_values": torch.cat(pixels) if pixels else empty}


def batch_tiles(batch: dict) -> int:
    """Tiles in a batch of either route, without touching the device."""
    if "image_plans" in batch:
        return sum(plan_tiles(p) for p in batch["image_plans"].tolist())
    pv = batch.get("pixel_values")
    return 0 if pv is None else int(pv.shape[0])


def batch_pixels(batch: dict, device: torch.device | str) -> torch.Tensor | None:
    """uint8 ``pixel_values`` [tiles, 3, S, S] on ``device`` for either route (None: no image keys)."""
    plans = batch.get("image_plans")
    if plans is not None:
        if not plans.shape[0]:
            return None
        return cut_on_device(batch["images"].to(device, non_blocking=True), plans)
    pv = batch.get("pixel_values")
    return None if pv is None else pv.to(device, non_blocking=True)
