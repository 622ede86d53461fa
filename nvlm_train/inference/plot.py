"""A loss-curve PNG drawn with Pillow (no plotting library needed)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

W, H, PAD = 800, 480, 60


def _scale(values, lo, hi, out_lo, out_hi):
    span = (hi - lo) or 1.0
    return [out_lo + (v - lo) / span * (out_hi - out_lo) for v in values]


def plot_loss_curve(metrics_jsonl: str | Path, out_png: str | Path, title: str = "training loss") -> Path:
    """Training loss (and validation loss where logged) against iteration."""
    records = [json.loads(line) for line in Path(metrics_jsonl).read_text().splitlines() if line.strip()]
    by_iter = {r["iteration"]: r for r in records}  # a resumed run may log an iteration twice
    its = sorted(by_iter)
    train = [(i, by_iter[i]["loss"]) for i in its if by_iter[i].get("loss") is not None]
    val = [(i, by_iter[i]["val_loss"]) for i in its if by_iter[i].get("val_loss") is not None]
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    d.rectangle([PAD, PAD // 2, W - PAD // 2, H - PAD], outline="black")
    if train:
        ys = [v for _, v in train + val]
        lo, hi = min(ys), max(ys)
        x_lo, x_hi = train[0][0], max(train[-1][0], train[0][0] + 1)
        for series, colour in ((train, (31, 119, 180)), (val, (214, 39, 40))):
            if not series:
                continue
            xs = _scale([i for i, _ in series], x_lo, x_hi, PAD, W - PAD // 2)
            ps = _scale([v for _, v in series], lo, hi, H - PAD, PAD // 2)
            pts = list(zip(xs, ps))
            if len(pts) > 1:
                d.line(pts, fill=colour, width=2)
            for x, y in pts if len(pts) < 30 else []:
                d.ellipse([x - 3, y - 3, x + 3, y + 3], outline=colour)
        for k in range(5):  # y ticks
            v = lo + (hi - lo) * k / 4
            y = _scale([v], lo, hi, H - PAD, PAD // 2)[0]
            d.line([PAD - 5, y, PAD, y], fill="black")
            d.text((5, y - 6), f"{v:.2f}", fill="black")
        for k in range(5):  # x ticks
            v = x_lo + (x_hi - x_lo) * k / 4
            x = _scale([v], x_lo, x_hi, PAD, W - PAD // 2)[0]
            d.line([x, H - PAD, x, H - PAD + 5], fill="black")
            d.text((x - 10, H - PAD + 8), f"{int(v)}", fill="black")
    d.text((PAD, 8), f"{title}  (blue: train loss, red: validation loss; x: iteration)", fill="black")
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    return out
