import pytest
import torch

from nvlm_train.hf.modeling_nvlm_d import pixel_shuffle


def reference_pixel_shuffle_v2(x, ratio=2):
    """Independent reference: explicit loops over every output element.

    Output token (i, j) (row-major over the downsampled grid) concatenates, in the order
    (di, dj) = (0,0), (0,1), (1,0), (1,1), the channels of input cell (ratio*i + di, ratio*j + dj).
    """
    n, rows, cols, c = x.shape
    out = torch.empty(n, rows // ratio, cols // ratio, c * ratio * ratio, dtype=x.dtype)
    for b in range(n):
        for i in range(rows // ratio):
            for j in range(cols // ratio):
                for di in range(ratio):
                    for dj in range(ratio):
                        block = di * ratio + dj
                        out[b, i, j, block * c : (block + 1) * c] = x[b, ratio * i + di, ratio * j + dj]
    return out


@pytest.mark.parametrize("shape", [(2, 4, 4, 3), (1, 6, 6, 5), (1, 8, 8, 2)])
def test_v2_matches_explicit_reference(shape):
    x = torch.randn(*shape)
    assert torch.equal(pixel_shuffle(x, 0.5, "v2"), reference_pixel_shuffle_v2(x))


def test_v2_tracks_element_positions():
    # Encode (row, col, channel) of each input element in its value and check where it lands.
    rows, cols, c = 4, 4, 3
    x = torch.zeros(1, rows, cols, c)
    for r in range(rows):
        for q in range(cols):
            for k in range(c):
                x[0, r, q, k] = r * 100 + q * 10 + k
    y = pixel_shuffle(x, 0.5, "v2")
    assert y.shape == (1, 2, 2, 12)
    # token (1, 0): input cells (2,0), (2,1), (3,0), (3,1)
    assert y[0, 1, 0].tolist() == [200, 201, 202, 210, 211, 212, 300, 301, 302, 310, 311, 312]


def test_v2_matches_transformers_internvl():
    InternVLModel = pytest.importorskip("transformers.models.internvl.modeling_internvl").InternVLModel
    x = torch.randn(3, 8, 8, 4)
    ref = InternVLModel.pixel_shuffle(None, x, scale_factor=0.5)
    assert torch.equal(pixel_shuffle(x, 0.5, "v2"), ref)


def test_v1_is_transposed_grid():
    x = torch.randn(1, 4, 4, 3)
    assert torch.equal(pixel_shuffle(x, 0.5, "v1"), pixel_shuffle(x, 0.5, "v2").transpose(1, 2))


def test_bad_grid_raises():
    with pytest.raises(ValueError, match="not divisible"):
        pixel_shuffle(torch.randn(1, 5, 5, 2), 0.5)
