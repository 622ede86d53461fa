"""The device route: Pillow's bicubic resize redone in torch must give Pillow's bytes, and tiles cut on
the device must equal the worker route's (hence the card's numbers), batch for batch."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from nvlm_train.data.loader import build_loader
from nvlm_train.training.forward_step import to_device
from nvlm_train.vision import resample, tiling
from nvlm_train.vision.device_tiles import cut_on_device, pack_images, plan_image, plan_tiles
from nvlm_train.vision.route import TileRoute, batch_tiles
from tests.data.card_reference import card_tiles, card_transform

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
needs_pillow = pytest.mark.skipif(not resample.pillow_supported(), reason="the pass order of Pillow >= 13")

EXTREME = [((1, 1), (448, 448)), ((1, 3000), (448, 5376)), ((3000, 1), (5376, 448)), ((3000, 1), (448, 448)),
           ((1, 3000), (448, 448)), ((896, 448), (448, 448)), ((4000, 3000), (1792, 1344)),
           ((4000, 3000), (448, 448)), ((640, 480), (1792, 1344)), ((300, 2000), (280, 40)),  # vertical first
           ((500, 500), (500, 17)), ((17, 500), (900, 500)), ((2, 3), (1, 1))]


def _image(w: int, h: int, rng: np.random.Generator, smooth: bool) -> np.ndarray:
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if smooth:  # photo-like gradients exercise rounding near ties, noise exercises the clipping
        small = rng.integers(0, 256, (max(1, h // 9), max(1, w // 9), 3), dtype=np.uint8)
        arr = np.asarray(Image.fromarray(small).resize((w, h)))
    return arr


def _cases(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = list(EXTREME)
    for _ in range(n):
        src = (int(rng.integers(1, 700)), int(rng.integers(1, 700)))
        dst = (int(rng.integers(1, 1000)), int(rng.integers(1, 1000)))
        out.append((src, dst))
    return out


@needs_pillow
@pytest.mark.parametrize("device", DEVICES)
def test_resize_is_pillows_bytes(device):
    rng = np.random.default_rng(1)
    for i, ((w, h), size) in enumerate(_cases(120)):
        arr = _image(w, h, rng, smooth=i % 2 == 0)
        ref = np.asarray(Image.fromarray(arr).resize(size))
        got = resample.resize(torch.from_numpy(arr.copy()).to(device), size).cpu().numpy()
        assert got.shape == ref.shape, ((w, h), size)
        assert np.array_equal(got, ref), ((w, h), size, int((got != ref).sum()))


def test_coefficients_sum_to_one_in_fixed_point():
    for in_size, out_size in ((4000, 448), (448, 4000), (7, 7 * 3 + 1), (3000, 1)):
        xmin, k = resample.coefficients(in_size, out_size)
        assert xmin.min() >= 0 and xmin.max() < in_size
        assert np.abs(k.sum(axis=1) - (1 << resample.PRECISION_BITS)).max() <= k.shape[1]  # rounding only


def test_resize_rejects_bad_input():
    with pytest.raises(TypeError, match="uint8"):
        resample.resize(torch.zeros(4, 4, 3), (2, 2))
    with pytest.raises(ValueError, match="positive"):
        resample.resize(torch.zeros(4, 4, 3, dtype=torch.uint8), (0, 2))


@needs_pillow
@pytest.mark.parametrize("device", DEVICES)
def test_device_tiles_equal_worker_tiles_and_the_card(device):
    rng = np.random.default_rng(2)
    images, plans, expected, cards = [], [], [], []
    for (w, h), max_num in (((640, 480), 12), ((1, 900), 6), ((900, 1), 12), ((448, 448), 12), ((1000, 300), 4),
                            ((37, 61), 2), ((1500, 1500), 1)):
        img = Image.fromarray(_image(w, h, rng, smooth=True))
        images.append(tiling.pixels_tensor(img))
        plans.append(plan_image(w, h, max_num, 56, use_thumbnail=True))
        expected.append(tiling.tile_image_uint8(img, max_num=max_num, image_size=56))
        cards.append(torch.stack([card_transform(t, 56) for t in card_tiles(img, max_num, 56, use_thumbnail=True)]))
        assert plan_tiles(plans[-1]) == expected[-1].shape[0]
    flat, plan_tensor = pack_images(images, plans)
    got = cut_on_device(flat.to(device), plan_tensor)
    assert got.device.type == device
    assert torch.equal(got.cpu(), torch.cat(expected))
    assert torch.equal(tiling.normalize_pixels(got).cpu(), torch.cat(cards))  # the card's floats, on this device


def test_plans_that_do_not_match_are_refused():
    img = torch.zeros(5, 7, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match="does not match its plan"):
        pack_images([img], [plan_image(8, 5, 6, 28, True)])
    flat, plans = pack_images([img], [plan_image(7, 5, 6, 28, True)])
    with pytest.raises(ValueError, match="describe 105 bytes but images holds 106"):
        cut_on_device(torch.cat([flat, flat[:1]]), plans)


@needs_pillow
@pytest.mark.parametrize("workers", [0, 2])
def test_device_route_batches_equal_worker_route_batches(small_cfg, workers):
    worker = build_loader(small_cfg)
    device = build_loader(dataclasses.replace(small_cfg, tile_route=TileRoute.DEVICE, num_workers=workers))
    for _ in range(5):
        a, b = next(worker), next(device)
        assert "pixel_values" not in b and b["images"].dtype == torch.uint8 and b["image_plans"].shape[1] == 6
        assert batch_tiles(b) == batch_tiles(a) == a["pixel_values"].shape[0] > 0
        moved = to_device(b, "cpu")
        assert moved.keys() == a.keys()
        for k in a:
            assert torch.equal(moved[k], a[k]), k
        for route in (a, b):  # later pipeline stages leave either route's pixels behind
            assert "pixel_values" not in to_device(route, "cpu", needs_pixels=False)
    device.close()


def test_tile_on_is_resolved_and_checked(monkeypatch):
    from nvlm_train.config.errors import ConfigError
    from nvlm_train.config.train import TrainConfig
    from nvlm_train.training import data as training_data

    cfg = TrainConfig()
    cfg.train.seq_length = 2048
    cfg.data.tile_on = "gpu"
    with pytest.raises(ConfigError, match="data.tile_on='gpu': use auto, worker or device"):
        cfg.validate(world_size=1)
    cfg.data.tile_on = "auto"
    assert (training_data.tile_route(cfg) is TileRoute.DEVICE) == torch.cuda.is_available()
    cfg.data.tile_on = "device"
    monkeypatch.setattr(resample, "pillow_version", lambda: (12, 1))
    with pytest.raises(ConfigError, match="Pillow 12.1 is installed; upgrade Pillow or set data.tile_on=worker"):
        training_data.tile_route(cfg)
    cfg.data.tile_on = "auto"
    assert training_data.tile_route(cfg) is TileRoute.WORKER
