import json
import tarfile
from collections import Counter

from nvlm_train.data.shards import index_shard
from nvlm_train.data.synth import COLOURS, HELDOUT_QUESTIONS, SHAPES, write_synthetic_shards
from nvlm_train.vision.tiling import num_tiles


def _samples(root, split):
    out = {}
    for path in sorted((root / split).glob("*.tar")):
        with tarfile.open(path) as t:
            for m in t.getmembers():
                key, ext = m.name.split(".", 1)
                out.setdefault(key, {})[ext] = t.extractfile(m).read()
    return out


def test_splits_are_deterministic(synth_root, tmp_path):
    write_synthetic_shards(tmp_path, n_train=120, n_heldout=20, seed=0, n_captions=20, samples_per_shard=50)
    for split in ("train", "captions", "heldout"):
        a = sorted((synth_root / split).glob("*.tar"))
        b = sorted((tmp_path / split).glob("*.tar"))
        assert [p.name for p in a] == [p.name for p in b] and a
        assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))
    assert [len(index_shard(str(p))) for p in sorted((synth_root / "train").glob("*.tar"))] == [50, 50, 20]


def test_heldout_answers_are_closed_set_single_words(synth_root):
    held = _samples(synth_root, "heldout")
    assert len(held) == 20
    for members in held.values():
        meta = json.loads(members["json"])
        q, a = meta["conversations"][0]["value"], meta["conversations"][1]["value"]
        assert q == "<image>\n" + HELDOUT_QUESTIONS[meta["task"]]
        assert a == meta["answer"] and a in (COLOURS if meta["task"] == "colour" else SHAPES)
    assert 4 <= len(COLOURS) <= 8 and 4 <= len(SHAPES) <= 8  # chance <= 25%


def test_train_split_covers_every_layout_and_many_tile_counts(synth_root):
    train = _samples(synth_root, "train")
    kinds = Counter()
    tiles = set()
    from io import BytesIO

    from PIL import Image

    for members in train.values():
        imgs = [k for k in members if k != "json"]
        kinds["multi" if len(imgs) > 1 else "image" if imgs else "text"] += 1
        for k in imgs:
            tiles.add(num_tiles(*Image.open(BytesIO(members[k])).size, max_num=6, image_size=448))
    assert kinds["multi"] > 0 and kinds["text"] > 0 and kinds["image"] > 60
    assert 1 in tiles and max(tiles) == 7 and len(tiles) >= 3
    caps = _samples(synth_root, "captions")
    m = next(iter(caps.values()))
    assert set(m) == {"jpg", "txt", "json"} and "conversations" not in json.loads(m["json"])


def test_read_heldout(synth_root):
    from nvlm_train.data.synth import read_heldout

    items = read_heldout(synth_root)
    assert len(items) == 20
    assert all(i.answer in (COLOURS if i.task == "colour" else SHAPES) for i in items)
    assert all(i.question.startswith("<image>\n") and i.image.mode == "RGB" for i in items)
    assert {i.task for i in items} == {"colour", "shape"}


def test_synth_colours_are_drawn(synth_root):
    """The colour answer matches the image: the most common non-background pixel is that colour."""
    import numpy as np

    from nvlm_train.data.synth import read_heldout

    for item in read_heldout(synth_root)[:8]:
        arr = np.asarray(item.image).reshape(-1, 3)
        fg = arr[arr.min(axis=1) < 200]
        colours, counts = np.unique(fg, axis=0, return_counts=True)
        top = tuple(int(v) for v in colours[counts.argmax()])
        if item.task == "colour":
            assert top == COLOURS[item.answer]
