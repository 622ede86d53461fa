"""Single-process tiles/s of the pipeline's training paths vs a faithful re-creation of the card's ``load_image``.

All start from the same encoded image bytes (varied sizes 640x480 .. 4000x3000; JPEG, PNG, WebP).

* ``card``: decode, the card's resizes and PIL crops, float32 ToTensor + Normalize per tile.
* ``worker_route`` (``data.tile_on=worker``, the default without a GPU): decode, the same two PIL
  resizes, one byte copy into uint8 tiles; the model normalises them on its device.
* ``pipeline`` (``data.tile_on=device``, the default on GPU hosts): the worker only decodes and
  plans; the training device does the resizes (``resample``: Pillow's arithmetic) and the cut.

What a data worker spends per image is timed on one core; the device's share (resize, cut and
normalise) is timed separately on ``--device`` (``device_tiling_s``). Both routes' outputs are checked
to be bit-identical to the card's first. Prints where the time goes, then one JSON line.
Usage: ``python bench/data_throughput.py [--max-num 12] [--device cuda]``.
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

from nvlm_train.data import tiling  # noqa: E402
from nvlm_train.data.device_tiles import pack_images, plan_image, plan_tiles, tiles_on_device  # noqa: E402
from nvlm_train.data.images import decode_image  # noqa: E402
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


def device_tiling(items: list[tuple[torch.Tensor, tuple]], device: str) -> tuple[torch.Tensor, float]:
    """The training device's part of the device route: copy, resize, cut, normalise. -> (tiles, seconds)."""
    flat, plans = pack_images([x for x, _ in items], [p for _, p in items])
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t0 = time.perf_counter()
    tiles = tiling.normalize_pixels(tiles_on_device(flat.to(device), plans))
    sync()
    return tiles, time.perf_counter() - t0


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-num", type=int, default=12)
    ap.add_argument("--image-size", type=int, default=448)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="where the device route's share is timed (default: cuda if present)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = make_images()
    size, max_num = args.image_size, args.max_num
    # Every route checked against the card once (bit-identical), on the device that is timed.
    for b in data:
        ref = torch.stack([card_transform(x, size) for x in
                           card_tiles(Image.open(io.BytesIO(b)).convert("RGB"), max_num, size, True)])
        ours = tiling.tile_image_uint8(decode_image(b), max_num, size)
        assert torch.equal(ours, run_worker_route([b], max_num, size, defaultdict(float))[0])
        assert torch.equal(tiling.normalize_pixels(ours), ref), "worker route and card differ"
        on_device, _ = device_tiling(run_pipeline([b], max_num, size, defaultdict(float)), args.device)
        assert torch.equal(on_device.cpu(), ref), "device route and card differ"
    best = {}
    for name, fn in (("pipeline", run_pipeline), ("worker_route", run_worker_route), ("card", run_card)):
        runs = []
        for _ in range(args.repeats):
            t: dict[str, float] = defaultdict(float)
            t0 = time.perf_counter()
            out = fn(data, max_num, size, t)
            runs.append((time.perf_counter() - t0, {k: round(v, 4) for k, v in t.items()}))
        tiles = sum(plan_tiles(x[1]) if isinstance(x, tuple) else x.shape[0] for x in out)
        total, parts = min(runs, key=lambda r: r[0])
        best[name] = {"tiles_per_s": round(tiles / total, 2), "seconds": round(total, 4), "breakdown_s": parts}
        print(f"{name:>12}: {tiles} tiles in {total:.3f}s = {tiles / total:.1f} tiles/s; {parts}", file=sys.stderr)
        if name == "pipeline":
            device_s = min(device_tiling(out, args.device)[1] for _ in range(args.repeats))
            print(f"{'device':>12}: resize + cut + normalise of those {tiles} tiles on {args.device}: "
                  f"{device_s:.4f}s", file=sys.stderr)
    card = best["card"]["tiles_per_s"]
    print(json.dumps({"images": len(data), "max_num": max_num, "image_size": size,
                      "pipeline_tiles_per_s": best["pipeline"]["tiles_per_s"], "card_tiles_per_s": card,
                      "ratio": round(best["pipeline"]["tiles_per_s"] / card, 3),
                      "worker_route_tiles_per_s": best["worker_route"]["tiles_per_s"],
                      "worker_route_ratio": round(best["worker_route"]["tiles_per_s"] / card, 3),
                      "device": args.device, "device_tiling_s": round(device_s, 4), **best}))


if __name__ == "__main__":
    main()
