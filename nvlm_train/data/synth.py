"""Synthetic demo data: solid shapes on plain backgrounds, with questions the image answers.

Designed so a tiny model can learn it on a CPU in minutes: big solid shapes, 5 colours and
4 shapes (chance <= 25%), one-word answers, held-out questions with a single exact-match answer.
Image sizes and aspect ratios vary so the tiler yields from 1 to many tiles. The train split also
holds multi-image and text-only conversations, and a caption split uses img2dataset's layout.
"""

from __future__ import annotations

import io
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from nvlm_train.data.shard_writer import ShardWriter, verify_shard

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 200, 20),
    "purple": (140, 50, 170),
}
SHAPES = ("circle", "square", "triangle", "cross")
COLOUR_QUESTIONS = (
    "What colour is the shape?",
    "What color is the shape?",
    "Which colour is the object in the picture?",
)
SHAPE_QUESTIONS = (
    "What shape is shown?",
    "Which shape is in the image?",
    "What is the shape in the picture?",
)
ONE_WORD = " Answer with one word."
HELDOUT_QUESTIONS = {"colour": "What colour is the shape?" + ONE_WORD, "shape": "What shape is shown?" + ONE_WORD}
CAPTION_TEMPLATES = ("a {c} {s} on a plain background", "a picture of a {c} {s}", "a {s} coloured {c}")
MIN_SIDE, MAX_SIDE = 64, 400
# Wider than this and the thumbnail tile squashes a shape until circle, square and cross blur together.
MAX_ASPECT = 2.5


@dataclass(frozen=True)
class ShapeSpec:
    colour: str
    shape: str
    width: int
    height: int


def random_spec(rng: random.Random) -> ShapeSpec:
    colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    long_side = rng.randint(MIN_SIDE, MAX_SIDE)
    short_side = rng.randint(max(MIN_SIDE, math.ceil(long_side / MAX_ASPECT)), long_side)
    width, height = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
    return ShapeSpec(colour, shape, width, height)


def draw(spec: ShapeSpec, rng: random.Random) -> Image.Image:
    """One solid shape, 45-85% of the shorter side, at a random position on a pale background."""
    bg = tuple(rng.randint(225, 255) for _ in range(3))
    img = Image.new("RGB", (spec.width, spec.height), bg)
    d = ImageDraw.Draw(img)
    side = max(8, int(min(spec.width, spec.height) * rng.uniform(0.45, 0.85)))
    x0 = rng.randint(0, spec.width - side)
    y0 = rng.randint(0, spec.height - side)
    x1, y1 = x0 + side - 1, y0 + side - 1
    fill = COLOURS[spec.colour]
    if spec.shape == "circle":
        d.ellipse((x0, y0, x1, y1), fill=fill)
    elif spec.shape == "square":
        d.rectangle((x0, y0, x1, y1), fill=fill)
    elif spec.shape == "triangle":
        d.polygon([(x0 + side // 2, y0), (x1, y1), (x0, y1)], fill=fill)
    else:
        t = side // 3
        d.rectangle((x0 + t, y0, x1 - t, y1), fill=fill)
        d.rectangle((x0, y0 + t, x1, y1 - t), fill=fill)
    return img


def encode_image(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format={"jpg": "JPEG", "png": "PNG"}[fmt], **({"quality": 95} if fmt == "jpg" else {}))
    return buf.getvalue()


def _conv(pairs: list[tuple[str, str]]) -> list[dict]:
    out = []
    for q, a in pairs:
        out += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return out


def single_image_sample(rng: random.Random) -> dict[str, bytes]:
    spec = random_spec(rng)
    fmt = rng.choice(("png", "png", "jpg"))
    cq = (rng.choice(COLOUR_QUESTIONS) + ONE_WORD, spec.colour)
    sq = (rng.choice(SHAPE_QUESTIONS) + ONE_WORD, spec.shape)
    # Mostly shape questions: colour is learnt in a few dozen steps, shape needs the ViT to see edges.
    r = rng.random()
    pairs = [cq] if r < 0.2 else [sq] if r < 0.7 else rng.sample([cq, sq], 2)
    pairs[0] = ("<image>\n" + pairs[0][0], pairs[0][1])
    meta = {"conversations": _conv(pairs), "colour": spec.colour, "shape": spec.shape}
    return {fmt: encode_image(draw(spec, rng), fmt), "json": json.dumps(meta).encode()}


def multi_image_sample(rng: random.Random) -> dict[str, bytes]:
    a, b = random_spec(rng), random_spec(rng)
    while b.colour == a.colour:
        b = random_spec(rng)
    target, answer = (a, "first") if rng.random() < 0.5 else (b, "second")
    q = f"Image 1: <image>\nImage 2: <image>\nWhich image has a {target.colour} shape? Answer first or second."
    meta = {"conversations": _conv([(q, answer)])}
    return {"0.png": encode_image(draw(a, rng), "png"), "1.png": encode_image(draw(b, rng), "png"),
            "json": json.dumps(meta).encode()}


def text_only_sample(rng: random.Random) -> dict[str, bytes]:
    colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    if rng.random() < 0.5:
        q, a = f"Is {colour} a colour or a shape?", "colour"
    else:
        q, a = f"Is {shape} a colour or a shape?", "shape"
    meta = {"conversations": _conv([(q + ONE_WORD, a)]), "system": "You are a helpful assistant."}
    return {"json": json.dumps(meta).encode()}


def caption_sample(rng: random.Random, key: str) -> dict[str, bytes]:
    spec = random_spec(rng)
    caption = rng.choice(CAPTION_TEMPLATES).format(c=spec.colour, s=spec.shape)
    meta = {"url": f"synthetic://{key}", "key": key, "caption": caption, "status": "success",
            "width": spec.width, "height": spec.height}
    return {"jpg": encode_image(draw(spec, rng), "jpg"), "txt": caption.encode(), "json": json.dumps(meta).encode()}


def heldout_sample(rng: random.Random) -> dict[str, bytes]:
    spec = random_spec(rng)
    task = rng.choice(("colour", "shape"))
    answer = spec.colour if task == "colour" else spec.shape
    meta = {"conversations": _conv([("<image>\n" + HELDOUT_QUESTIONS[task], answer)]),
            "task": task, "answer": answer}
    return {"png": encode_image(draw(spec, rng), "png"), "json": json.dumps(meta).encode()}


def _train_sample(rng: random.Random) -> dict[str, bytes]:
    r = rng.random()
    if r < 0.1:
        return multi_image_sample(rng)
    if r < 0.2:
        return text_only_sample(rng)
    return single_image_sample(rng)


# Bumped whenever the generator's output changes, so caches keyed by demo_data_root() are rebuilt.
SYNTH_VERSION = 3


def demo_data_root(cache: str | Path, n_train: int, n_heldout: int, seed: int) -> Path:
    """Where the trainer and the demo cache the synthetic shards for these arguments."""
    return Path(cache) / f"demo-v{SYNTH_VERSION}-{n_train}-{n_heldout}-seed{seed}"


def write_synthetic_shards(
    out_dir: str | Path,
    n_train: int,
    n_heldout: int,
    seed: int = 0,
    n_captions: int | None = None,
    samples_per_shard: int = 500,
    progress: Callable[[int], None] | None = None,
) -> dict[str, list[Path]]:
    """Write ``train/``, ``captions/`` and ``heldout/`` shards under ``out_dir``; returns the shard paths.

    ``n_captions`` defaults to a tenth of ``n_train``. The same arguments give byte-identical shards.
    """
    out = Path(out_dir)
    n_captions = max(1, n_train // 10) if n_captions is None else n_captions
    splits: dict[str, list[Path]] = {}
    plan = [("train", n_train, lambda r, k: _train_sample(r)), ("captions", n_captions, caption_sample),
            ("heldout", n_heldout, lambda r, k: heldout_sample(r))]
    for split, n, make in plan:
        if n <= 0:
            continue
        rng = random.Random(f"{seed}-{split}")
        with ShardWriter(out / split, split, max_count=samples_per_shard) as w:
            for i in range(n):
                key = f"{split}_{i:07d}"
                w.write(key, make(rng, key))
                if progress is not None:
                    progress(1)
        for path, count in zip(w.paths, w.counts):
            verify_shard(path, count)
        splits[split] = list(w.paths)
    return splits


def corpus_lines() -> list[str]:
    """Text the demo tokenizer is trained on, so the synthetic questions and answers tokenize compactly."""
    lines = []
    for q in COLOUR_QUESTIONS + SHAPE_QUESTIONS + tuple(HELDOUT_QUESTIONS.values()):
        lines += [q, q + ONE_WORD, "<image>\n" + q + ONE_WORD]
    for c in COLOURS:
        for s in SHAPES:
            lines += [f"Is {c} a colour or a shape?{ONE_WORD}", f"Is {s} a colour or a shape?{ONE_WORD}"]
            lines += [t.format(c=c, s=s) for t in CAPTION_TEMPLATES]
            lines += [f"Which image has a {c} shape? Answer first or second.", c, s, f" {c}", f" {s}"]
    lines += ["Image 1: <image>\nImage 2: <image>\n", "first", "second", "colour", "shape",
              "You are a helpful assistant.", "Briefly describe this image.",
              "<Image><tile_1><tile_2><tile_3><tile_4><tile_5><tile_6><tile_global_thumbnail></Image>"]
    return lines


@dataclass(frozen=True)
class HeldoutItem:
    key: str
    image: Image.Image
    question: str  # the user text, with its ``<image>\n`` placeholder
    answer: str
    task: str


def read_heldout(root: str | Path) -> list[HeldoutItem]:
    """The held-out split as (image, question, exact answer) items, for accuracy evaluation."""
    import tarfile

    items = []
    for path in sorted((Path(root) / "heldout").glob("heldout-*.tar")):
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(path) as tar:
            for m in tar:
                if m.isfile():
                    key, ext = m.name.split(".", 1)
                    members.setdefault(key, {})[ext] = tar.extractfile(m).read()
        for key, mem in members.items():
            meta = json.loads(mem["json"])
            img = Image.open(io.BytesIO(mem["png"])).convert("RGB")
            items.append(HeldoutItem(key, img, meta["conversations"][0]["value"], meta["answer"], meta["task"]))
    if not items:
        raise FileNotFoundError(f"no held-out shards under {Path(root) / 'heldout'}; run `nvlm-data synth` first")
    return items
