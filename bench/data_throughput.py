"""End-to-end seconds per tile of both tiling routes vs a faithful re-creation of the card's ``load_image``.

All start from the same encoded image bytes (varied sizes 640x480 .. 4000x3000; JPEG, PNG, WebP).
Each route's time per tile is the sum of the three places its work happens:

* ``worker``: what one data worker spends (one core): decode, resizes, cut, ...;
* ``collate``: joining the images' results into the batch's tensors (also in the worker process);
* ``device``: what the training device spends once the batch arrives, timed on ``--device``
  (``cuda`` on a GPU host: where it would run; ``none``: not measured, and no end-to-end figure).

Routes:

* ``card``: decode, the card's resizes and PIL crops, float32 ToTensor + Normalize per tile in the
  worker; collate stacks the float tiles; the device only receives them (copy).
* ``worker_route`` (``data.tile_on=worker``, the default without a GPU): decode, the same two PIL
  resizes, one byte copy into uint8 tiles; collate concatenates them; the device copies and
  normalises them (the ViT's lookup).
* ``device_route`` (``data.tile_on=device``, the default on GPU hosts): the worker only decodes and
  plans; collate packs the RGB bytes; the device copies, resizes (``resample``: Pillow's
  arithmetic), cuts and normalises.

Both routes' outputs are checked to be bit-identical to the card's first. Ratios are named
``<numerator>_over_<denominator>`` and divide seconds per tile (above 1: the denominator is faster).
Prints where the time goes, then one JSON line.
Usage: ``python bench/data_throughput.py [--max-num 12] [--device cuda|cpu|none]``.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nvlm_train.data.images import decode_image  # noqa: E402
from nvlm_train.vision import tiling  # noqa: E402
from nvlm_train.vision.device_tiles import cut_on_device, pack_images, plan_image, plan_tiles  # noqa: E402
from tests.data.card_reference import card_tiles, card_transform  # noqa: E402

SIZES = [(640, 480, "JPEG"), (1024, 768, "PNG"), (1280, 720, "WEBP"), (1920, 1080, "JPEG"), (800, 1200, "PNG"),
         (2048, 1536, "JPEG"), (3000, 1000, "WEBP"), (4000, 3000, "JPEG")]


def make_images(seed: int = 0) -> list[bytes]:
    """Photo-like content (smooth colour fields + noise) so codecs do realistic work."""
    rng = np.random.default_rng(seed)
    out = []
    for w, h, fmt in SIZES:
        low = Image.fromarray(rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8))
        arr = np.asarray(low.resize((w, h), Image.Resampling.BICUBIC)).astype(np.int16)
        arr = np.clip(arr + rng.integers(-12, 13, arr.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format=fmt, **({"quality": 90} if fmt in ("JPEG", "WEBP") else {}))
        out.append(buf.getvalue())
    return out


def run_worker_route(data: list[bytes], max_num: int, size: int, t: dict) -> list[torch.Tensor]:
    """``data.tile_on=worker``: decode, the two PIL resizes, one byte copy into uint8 CHW tiles."""
    res = []
    for b in data:
        t0 = time.perf_counter()
        img = decode_image(b)
        t1 = time.perf_counter()
        cols, rows, grid, thumb = tiling._grid_and_thumb(img, max_num, size, True)
        t2 = time.perf_counter()
        res.append(tiling.cut_tiles(tiling.pixels_tensor(grid), None if thumb is None else tiling.pixels_tensor(thumb),
                                    cols, rows, size))
        t3 = time.perf_counter()
        t["decode"] += t1 - t0
        t["resize"] += t2 - t1
        t["crop"] += t3 - t2
    return res


def run_pipeline(data: list[bytes], max_num: int, size: int, t: dict) -> list[tuple[torch.Tensor, tuple]]:
    """``data.tile_on=device``, the worker's part: decode, then the RGB bytes and the tiling plan."""
    res = []
    for b in data:
        t0 = time.perf_counter()
        img = decode_image(b)
        t1 = time.perf_counter()
        res.append((tiling.pixels_tensor(img), plan_image(*img.size, max_num, size, True)))
        t["decode"] += t1 - t0
        t["plan"] += time.perf_counter() - t1
    return res


def _timed(fn, device: str):
    """(result, seconds) of ``fn()``, synchronising ``device`` around it."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t0


def device_tiling(items: list[tuple[torch.Tensor, tuple]], device: str) -> tuple[torch.Tensor, float]:
    """The training device's part of the device route: copy, resize, cut, normalise. -> (tiles, seconds)."""
    flat, plans = pack_images([x for x, _ in items], [p for _, p in items])
    return _timed(lambda: tiling.normalize_pixels(cut_on_device(flat.to(device), plans)), device)


def collate_share(name: str, out: list):
    """What the batch collation does with one route's per-image results (``data.packing.collate``)."""
    if name == "device_route":
        return lambda: pack_images([x for x, _ in out], [p for _, p in out])
    return lambda: torch.cat(out)


def device_share(name: str, batch, device: str) -> float:
    """Seconds the training device spends on a collated batch of this route."""
    if name == "device_route":
        flat, plans = batch
        return _timed(lambda: tiling.normalize_pixels(cut_on_device(flat.to(device), plans)), device)[1]
    if name == "worker_route":
        return _timed(lambda: tiling.normalize_pixels(batch.to(device)), device)[1]
    return _timed(lambda: batch.to(device), device)[1]  # the card's float tiles: the copy only


def run_card(data: list[bytes], max_num: int, size: int, t: dict) -> list[torch.Tensor]:
    res = []
    for b in data:
        t0 = time.perf_counter()
        img = Image.open(io.BytesIO(b)).convert("RGB")
        t1 = time.perf_counter()
        tiles = card_tiles(img, max_num, size, use_thumbnail=True)  # resizes + PIL crops
        t2 = time.perf_counter()
        res.append(torch.stack([card_transform(x, size) for x in tiles]))
        t3 = time.perf_counter()
        t["decode"] += t1 - t0
        t["resize+crop"] += t2 - t1
        t["to_tensor+normalise"] += t3 - t2
    return res


def _sig(x: float) -> float:
    return float(f"{x:.4g}")


ROUTES = (("device_route", run_pipeline), ("worker_route", run_worker_route), ("card", run_card))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-num", type=int, default=12)
    ap.add_argument("--image-size", type=int, default=448)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="where the device share is timed (default: cuda if present); 'none': not measured")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = make_images()
    size, max_num = args.image_size, args.max_num
    device = None if args.device == "none" else args.device
    check_on = device or "cpu"
    # Every route checked against the card once (bit-identical), on the device that is timed.
    for b in data:
        ref = torch.stack([card_transform(x, size) for x in
                           card_tiles(Image.open(io.BytesIO(b)).convert("RGB"), max_num, size, True)])
        ours = tiling.tile_image_uint8(decode_image(b), max_num, size)
        assert torch.equal(ours, run_worker_route([b], max_num, size, defaultdict(float))[0])
        assert torch.equal(tiling.normalize_pixels(ours), ref), "worker route and card differ"
        on_device, _ = device_tiling(run_pipeline([b], max_num, size, defaultdict(float)), check_on)
        assert torch.equal(on_device.cpu(), ref), "device route and card differ"
    routes = {}
    tiles = None
    for name, fn in ROUTES:
        runs = []
        for _ in range(args.repeats):
            t: dict[str, float] = defaultdict(float)
            t0 = time.perf_counter()
            out = fn(data, max_num, size, t)
            runs.append((time.perf_counter() - t0, {k: round(v, 4) for k, v in t.items()}))
        tiles = sum(plan_tiles(x[1]) if isinstance(x, tuple) else x.shape[0] for x in out)
        worker_s, parts = min(runs, key=lambda r: r[0])
        collate = collate_share(name, out)
        collate_s = min(_timed(collate, "cpu")[1] for _ in range(args.repeats))
        batch = collate()
        device_s = min(device_share(name, batch, device) for _ in range(args.repeats)) if device else None
        total = worker_s + collate_s + (device_s or 0.0)
        routes[name] = {
            "worker_s_per_tile": _sig(worker_s / tiles), "collate_s_per_tile": _sig(collate_s / tiles),
            "device_s_per_tile": None if device_s is None else _sig(device_s / tiles),
            "end_to_end_s_per_tile": None if device_s is None else _sig(total / tiles),
            "worker_breakdown_s": parts,
        }
        shown = "not measured" if device_s is None else f"{device_s:.4f}s on {device}"
        print(f"{name:>12}: {tiles} tiles; worker {worker_s:.3f}s (one core) {parts}, collate {collate_s:.4f}s, "
              f"device {shown}", file=sys.stderr)

    def over(a: str, b: str, key: str):
        x, y = routes[a][key], routes[b][key]
        return None if x is None or y is None else round(x / y, 3)

    ratios = {
        "card_end_to_end_over_worker_route_end_to_end": over("card", "worker_route", "end_to_end_s_per_tile"),
        "card_end_to_end_over_device_route_end_to_end": over("card", "device_route", "end_to_end_s_per_tile"),
        "worker_route_end_to_end_over_device_route_end_to_end":
            over("worker_route", "device_route", "end_to_end_s_per_tile"),
        "card_worker_over_worker_route_worker": over("card", "worker_route", "worker_s_per_tile"),
        "card_worker_over_device_route_worker": over("card", "device_route", "worker_s_per_tile"),
    }
    print(json.dumps({"images": len(data), "max_num": max_num, "image_size": size, "tiles": tiles,
                      "worker_cores": 1, "device_share_measured_on": device, "routes": routes, "ratios": ratios}))


if __name__ == "__main__":
    main()
