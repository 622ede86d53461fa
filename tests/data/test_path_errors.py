"""A recipe that finds no data says, in one paragraph, which recipe, dataset, pattern and folder."""

from __future__ import annotations

import pytest

from nvlm_train.data.loader import DataConfig, build_loader
from nvlm_train.data.path_report import DataPathError
from nvlm_train.data.recipe import recipes_dir

DEMO = recipes_dir() / "demo.yaml"


def _message(data_root) -> str:
    with pytest.raises(DataPathError) as info:
        build_loader(DataConfig(recipe="demo", data_root=str(data_root), cache_dir=str(data_root.parent / "cache"),
                                seq_length=1024, max_tiles=6, image_size=448, tokens_per_tile=256))
    return str(info.value)


def _tail() -> str:
    return (". Shards must be webdataset .tar files (nvlm-data build-shards writes them from loose files); "
            "check data.data_root and the recipe's paths")


def test_empty_data_root(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    assert _message(root) == (
        f"recipe demo ({DEMO}, data_root {root}) has no readable samples in any dataset. "
        f"dataset 'synth-conversations': {root}/train/train-*.tar matched nothing ({root}/train does not exist; "
        f"{root} is empty). "
        f"dataset 'synth-captions': {root}/captions/captions-*.tar matched nothing ({root}/captions does not "
        f"exist; {root} is empty)" + _tail())


def test_folder_of_loose_images(tmp_path):
    root = tmp_path / "loose"
    root.mkdir()
    for i in range(6):
        (root / f"img{i}.jpg").write_bytes(b"\xff\xd8")
    msg = _message(root)
    assert (f"{root}/train/train-*.tar matched nothing ({root}/train does not exist; {root} holds "
            f"img0.jpg, img1.jpg, img2.jpg, img3.jpg, ... (6 entries))") in msg
    assert "\n" not in msg


def test_files_named_tar_that_are_not_tars(tmp_path):
    root = tmp_path / "fake"
    (root / "train").mkdir(parents=True)
    (root / "captions").mkdir()
    (root / "train" / "train-000000.tar").write_text("not a tar")
    (root / "train" / "train-000001.tar").write_text("")
    (root / "captions" / "captions-000000.tar").write_text("nope")
    msg = _message(root)
    assert msg.startswith(f"recipe demo ({DEMO}, data_root {root}) has no readable samples in any dataset. ")
    assert (f"dataset 'synth-conversations': {root}/train/train-*.tar matched 2 file(s), none readable "
            f"(train-000000.tar: not a readable tar (ReadError: truncated header); train-000001.tar: ") in msg
    assert (f"dataset 'synth-captions': {root}/captions/captions-*.tar matched 1 file(s), none readable "
            f"(captions-000000.tar: not a readable tar (ReadError: truncated header))") in msg
