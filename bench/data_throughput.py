"""Single-process tiles/s: the pipeline's training path vs a faithful re-creation of the card's ``load_image``.

Both start from the same encoded image bytes (varied sizes 640x480 .. 4000x3000; JPEG, PNG, WebP).
The card's path ends with float32 normalised tiles; the pipeline's training path ends with the uint8
tiles the loader batches, which the model normalises on its device (``tiling.normalize_pixels``):
the outputs are checked to be bit-identical after that step. The time that step takes on this CPU is
reported separately (``device_normalise_s``; on a GPU it is a few microseconds per tile). Prints a
breakdown of where the time goes, then one JSON line.
Usage: ``python bench/data_throughput.py [--max-num 12]``.
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


def run_pipeline(data: list[bytes], max_num: int, size: int, t: dict) -> list[torch.Tensor]:
    """What a data worker does per image: decode, the two resizes, one byte copy into uint8 CHW tiles."""
    res = []
    for b in data:
        t0 = time.perf_counter()
        img = decode_image(b)
        t1 = time.perf_counter()
        cols, rows, grid, thumb = tiling._grid_and_thumb(img, max_num, size, True)
        t2 = time.perf_counter()
        n = cols * rows
        out = np.empty((n + (thumb is not None), 3, size, size), dtype=np.uint8)
        out[:n].reshape(rows, cols, 3, size, size)[...] = grid.reshape(rows, size, cols, size, 3).transpose(
            0, 2, 4, 1, 3)
        if thumb is not None:
            out[n] = thumb.transpose(2, 0, 1)
        res.append(torch.from_numpy(out))
        t3 = time.perf_counter()
        t["decode"] += t1 - t0
        t["resize"] += t2 - t1
        t["crop"] += t3 - t2
    return res


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
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--max-num", type=int, default=12)
    ap.add_argument("--image-size", type=int, default=448)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = make_images()
    # The loader's function and the bench's inlined copy of it, then the model's normalisation, checked
    # against the card once (bit-identical).
    for b in data:
        ours = tiling.tile_image_uint8(decode_image(b), args.max_num, args.image_size)
        assert torch.equal(ours, run_pipeline([b], args.max_num, args.image_size, defaultdict(float))[0])
        ref = torch.stack([card_transform(x, args.image_size) for x in
                           card_tiles(Image.open(io.BytesIO(b)).convert("RGB"), args.max_num, args.image_size, True)])
        assert torch.equal(tiling.normalize_pixels(ours), ref), "pipeline and card outputs differ"
    best = {}
    device_normalise = float("inf")
    for name, fn in (("pipeline", run_pipeline), ("card", run_card)):
        runs = []
        for _ in range(args.repeats):
            t: dict[str, float] = defaultdict(float)
            t0 = time.perf_counter()
            out = fn(data, args.max_num, args.image_size, t)
            runs.append((time.perf_counter() - t0, {k: round(v, 4) for k, v in t.items()}))
            tiles = sum(x.shape[0] for x in out)
            if name == "pipeline":
                t1 = time.perf_counter()
                for x in out:
                    tiling.normalize_pixels(x)
                device_normalise = min(device_normalise, time.perf_counter() - t1)
        total, parts = min(runs, key=lambda r: r[0])
        best[name] = {"tiles_per_s": round(tiles / total, 2), "seconds": round(total, 4), "breakdown_s": parts}
        print(f"{name:>8}: {tiles} tiles in {total:.3f}s = {tiles / total:.1f} tiles/s; {parts}", file=sys.stderr)
    ratio = best["pipeline"]["tiles_per_s"] / best["card"]["tiles_per_s"]
    print(json.dumps({"images": len(data), "max_num": args.max_num, "image_size": args.image_size,
                      "pipeline_tiles_per_s": best["pipeline"]["tiles_per_s"],
                      "card_tiles_per_s": best["card"]["tiles_per_s"], "ratio": round(ratio, 3),
                      "pipeline": best["pipeline"], "card": best["card"],
                      "device_normalise_s": round(device_normalise, 4)}))


if __name__ == "__main__":
    main()
