"""Pillow's bicubic ``Image.resize`` for 8-bit RGB, redone in torch bit for bit, on any device.

Why: the two resizes are most of a data worker's time per image (decode is the rest). With this,
a worker only decodes and the GPU cuts the tiles (``device_tiles.cut_on_device``), and the numbers fed
to the model are still exactly the model card's, because this is Pillow's own arithmetic:

* coefficients: Pillow's ``precompute_coeffs`` (float64, same operations in the same order) and
  ``normalize_coeffs_8bpc`` (rounded to int32 with 22 fractional bits);
* each pass: ``2**21 + sum(pixel * coeff)`` in int32, arithmetic shift by 22, clip to 0..255 -- the
  sum of integers is exact in any order, so a GPU gives the same bytes as Pillow's C loop;
* pass order: horizontal then vertical, except (Pillow >= 13) when the height shrinks more than
  twice as much as the width; a pass is skipped where that dimension does not change.

``tests/data/test_resample.py`` checks it against the installed Pillow on hundreds of sizes.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import PIL
import torch

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point for 8-bit images
BICUBIC_SUPPORT = 2.0
MIN_PILLOW = (13, 0)  # the pass order replicated here (python-pillow/Pillow#9549)


def pillow_version() -> tuple[int, int]:
    major, minor = PIL.__version__.split(".")[:2]
    return int(major), int(minor)


def pillow_supported() -> bool:
    """Whether the installed Pillow resizes the way this module does (else tiles must be cut by PIL)."""
    return pillow_version() >= MIN_PILLOW


def _bicubic(x: np.ndarray) -> np.ndarray:
    """Pillow's ``bicubic_filter`` (a = -0.5), elementwise, same float64 operations."""
    x = np.abs(x)
    near = ((1.5 * x - 2.5) * x) * x + 1  # ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * -0.5  # (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@functools.lru_cache(maxsize=512)
def coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """-> (first input index int64 [out], fixed-point weights int32 [out, ksize]) for one axis.

    Taps past an output's window get weight 0 (their index is clamped into range by the caller).
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = BICUBIC_SUPPORT * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    center = 0.0 + (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    xmin = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)  # C's (int) truncates
    xmax = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64)
    count = xmax - xmin
    inv_filterscale = 1.0 / filterscale
    x = np.arange(ksize)
    valid = x[None, :] < count[:, None]  # [out, ksize]
    w = np.where(valid, _bicubic(((x[None, :] + xmin[:, None]) - center[:, None] + 0.5) * inv_filterscale), 0.0)
    ww = np.cumsum(w, axis=1)[:, -1]  # a running sum: the same order (and roundings) as Pillow's loop
    w = np.divide(w, ww[:, None], out=w.copy(), where=ww[:, None] != 0.0)
    one = float(1 << PRECISION_BITS)
    k = np.where(w < 0, np.trunc(-0.5 + w * one), np.trunc(0.5 + w * one)).astype(np.int32)
    return xmin, k


GATHER_ELEMENTS = 1 << 25  # int32 elements of one gathered block (128 MB): bounds memory on big images


def _passes(in_h: int, in_w: int, w: int, h: int) -> list[tuple[int, int, int]]:
    """Pillow's passes for one resize: (dim, in_size, out_size), dim 1 = horizontal, 0 = vertical."""
    horizontal_first = not (in_h - h > 0 and in_h - h > (in_w - w) * 2)
    order = [(1, in_w, w), (0, in_h, h)] if horizontal_first else [(0, in_h, h), (1, in_w, w)]
    return [p for p in order if p[1] != p[2]]


def _resample_axis(img: torch.Tensor, dim: int, taps: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """One Pillow 8-bit pass along ``dim`` of uint8 [H, W, C]; ``taps`` int64 [out*ksize], ``weights`` int32
    [out, ksize] on ``img``'s device.

    All taps of all outputs are gathered at once ([rows, out, ksize, C]) and reduced in int32: a handful
    of kernels per pass whatever the filter length, in row blocks of ``GATHER_ELEMENTS``.
    """
    x = img if dim == 1 else img.transpose(0, 1)  # [R, in, C]: resample along dim 1
    out_size, ksize = weights.shape
    w = weights[None, :, :, None]  # [1, out, ksize, 1]; taps past a window weigh 0
    rows, channels = x.shape[0], x.shape[2]
    block = max(1, GATHER_ELEMENTS // (out_size * ksize * channels))
    out = torch.empty((rows, out_size, channels), dtype=torch.uint8, device=img.device)
    for r in range(0, rows, block):
        gathered = x[r:r + block].index_select(1, taps).view(-1, out_size, ksize, channels)  # [b, out, ksize, C]
        acc = (gathered.int() * w).sum(dim=2, dtype=torch.int32) + (1 << (PRECISION_BITS - 1))
        out[r:r + block] = acc.bitwise_right_shift_(PRECISION_BITS).clamp_(0, 255)
    return out if dim == 1 else out.transpose(0, 1)


def resize_many(images: list[torch.Tensor], sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """``resize`` of each image to its (w, h), with one host-to-device copy of all their filter tables
    (a copy per pass would stall the CPU on the GPU's queue each time)."""
    jobs, taps_np, weights_np = [], [], []
    for img, (w, h) in zip(images, sizes, strict=True):
        if img.dtype != torch.uint8 or img.dim() != 3:
            raise TypeError(f"resize takes a uint8 [H, W, C] tensor, got {img.dtype} {tuple(img.shape)}")
        if w < 1 or h < 1:
            raise ValueError(f"target size must be positive, got {(w, h)}")
        passes = []
        for dim, n_in, n_out in _passes(img.shape[0], img.shape[1], w, h):
            xmin, k = coefficients(n_in, n_out)
            passes.append((dim, len(taps_np), k.shape))
            taps_np.append(np.minimum(xmin[:, None] + np.arange(k.shape[1]), n_in - 1).reshape(-1))
            weights_np.append(k.reshape(-1))
        jobs.append(passes)
    if not taps_np:
        return [img.clone() for img in images]
    dev = images[0].device
    taps_all = torch.from_numpy(np.concatenate(taps_np)).to(dev)
    weights_all = torch.from_numpy(np.concatenate(weights_np)).to(dev)
    offsets = np.concatenate([[0], np.cumsum([t.size for t in taps_np])])
    out = []
    for img, passes in zip(images, jobs):
        for dim, i, shape in passes:
            span = slice(int(offsets[i]), int(offsets[i + 1]))
            img = _resample_axis(img, dim, taps_all[span], weights_all[span].view(shape))
        out.append(img.contiguous() if passes else img.clone())
    return out


def resize(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [H, W, C] -> uint8 [h, w, C], equal to ``Image.fromarray(img).resize((w, h))`` (bicubic)."""
    return resize_many([img], [size])[0]
