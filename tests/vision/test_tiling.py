import numpy as np
import pytest
import torch
from PIL import Image

from nvlm_train.vision import tiling
from tests.data.card_reference import card_grid, card_load_image, card_tiles


def _noise(w: int, h: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)


def test_grid_choice_matches_card_on_many_sizes():
    rng = np.random.default_rng(0)
    sizes = [(1, 1), (1, 3000), (3000, 1), (448, 448), (896, 448), (1344, 896), (448, 5376), (224, 224),
             (1000, 1000), (2, 1), (1, 2), (225, 224), (447, 449)]
    sizes += [tuple(int(v) for v in rng.integers(1, 5000, 2)) for _ in range(3000)]
    for max_num in (1, 2, 6, 12):
        for image_size in (448, 224):
            for w, h in sizes:
                assert tiling.tile_grid(w, h, 1, max_num, image_size) == card_grid(w, h, 1, max_num, image_size)


@pytest.mark.parametrize("size,max_num,expected_tiles", [
    ((1, 1), 12, 1), ((1, 300), 12, 13), ((300, 1), 12, 13), ((112, 56), 12, 3), ((56, 56), 12, 1),
    ((168, 112), 12, 7), ((57, 200), 6, 5), ((200, 100), 1, 1), ((1, 3000), 12, 13), ((3000, 1), 12, 13),
    ((168, 56), 12, 4), ((224, 224), 12, 10), ((224, 224), 16, 17),
])
def test_load_image_matches_card_bitwise(size, max_num, expected_tiles):
    img = _noise(*size, seed=size[0] * 7 + size[1])
    ours = tiling.load_image(img, input_size=56, max_num=max_num)
    ref = card_load_image(img, input_size=56, max_num=max_num)
    assert ours.shape == (expected_tiles, 3, 56, 56)
    assert ours.dtype == torch.float32
    assert torch.equal(ours, ref)


def test_load_image_full_size_and_path(tmp_path):
    img = _noise(640, 480, seed=3)
    path = tmp_path / "x.png"
    img.save(path)
    ours = tiling.load_image(str(path), input_size=448, max_num=6)
    ref = card_load_image(Image.open(path), input_size=448, max_num=6)
    assert ours.shape == (7, 3, 448, 448)
    assert torch.equal(ours, ref)


def test_dynamic_preprocess_matches_card_pixels():
    img = _noise(300, 97, seed=5)
    for thumb in (False, True):
        ours = tiling.dynamic_preprocess(img, min_num=1, max_num=12, image_size=32, use_thumbnail=thumb)
        ref = card_tiles(img, 12, 32, thumb)
        assert len(ours) == len(ref)
        for a, b in zip(ours, ref):
            assert a.size == (32, 32)
            assert np.array_equal(np.asarray(a), np.asarray(b))


def test_non_rgb_modes_are_converted_like_the_card():
    base = _noise(90, 60, seed=9)
    for mode in ("L", "P", "RGBA", "CMYK", "LA", "1"):
        img = base.convert(mode)
        assert torch.equal(tiling.load_image(img, 28, 6), card_load_image(img, 28, 6))


def test_num_tiles_agrees_with_tiler():
    for w, h in [(1, 1), (50, 400), (400, 50), (100, 100), (113, 57)]:
        for mx in (1, 4, 12):
            n = tiling.num_tiles(w, h, max_num=mx, image_size=28)
            assert n == tiling.tile_image_uint8(_noise(w, h), max_num=mx, image_size=28).shape[0]


def test_normalisation_is_bit_identical_for_every_value():
    values = torch.arange(256, dtype=torch.uint8)
    img = values.view(1, 1, 16, 16).expand(1, 3, 16, 16).contiguous()
    ours = tiling.normalize_pixels(img)
    x = img.float().div(255)  # torchvision ToTensor, then Normalize
    mean = torch.tensor(tiling.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(tiling.IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.equal(ours, (x - mean) / std)
    # ... and the numpy float route that load_image uses gives the same numbers.
    f = img.numpy().astype(np.float32)
    assert torch.equal(ours, torch.from_numpy(tiling.normalize_(f)))


def test_uint8_route_equals_float_route():
    img = _noise(130, 61, seed=11)
    u = tiling.tile_image_uint8(img, max_num=6, image_size=28)
    assert u.dtype == torch.uint8 and u.shape[1:] == (3, 28, 28)
    assert torch.equal(tiling.normalize_pixels(u), tiling.tile_image(img, max_num=6, image_size=28))


def test_normalize_pixels_takes_only_uint8():
    with pytest.raises(TypeError, match="uint8"):
        tiling.normalize_pixels(torch.zeros(1, 3, 2, 2))
