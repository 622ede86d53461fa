"""Every console script of pyproject.toml runs as installed, from any directory; ``nvlm-train``
refuses typos (with or without ``+``) and unset or ignored data settings with exact messages."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.training.conftest import REPO, base_overrides

BIN = Path(sys.executable).parent
SCRIPTS = sorted(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"])


def _run(script: str, *args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([str(BIN / script), *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=env)


def _error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """stderr without library warnings."""
    return [line for line in proc.stderr.splitlines()
            if line.strip() and "Warning" not in line and "warnings.warn" not in line]


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_console_script_has_help(script, tmp_path):
    proc = _run(script, "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip()


def test_nvlm_train_help_and_cfg_job_outside_the_checkout(tmp_path):
    proc = _run("nvlm-train", "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "data: custom, demo\n" in proc.stdout
    assert "model: nvlm_d_2b, nvlm_d_72b, nvlm_d_tiny\n" in proc.stdout
    assert "schema" not in proc.stdout  # schemas are not config-group choices

    proc = _run("nvlm-train", "--cfg", "job", "experiment=demo", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["train"]["iters"] == 1600 and cfg["model"]["name"] == "nvlm_d_tiny"
    assert cfg["data"]["recipe"] == "demo"


@pytest.mark.slow
def test_nvlm_train_trains_two_steps(tmp_path, data_cache):
    run_dir = tmp_path / "run"
    proc = _run("nvlm-train", *base_overrides(data_cache, run_dir, iters=2), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (run_dir / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("override", ["train.itres=3", "+train.itres=3", "++train.itres=3"])
def test_typo_is_refused_with_a_suggestion(override, tmp_path):
    proc = _run("nvlm-train", "experiment=demo", override, cwd=tmp_path)
    assert proc.returncode == 2
    assert _error_lines(proc) == [
        "nvlm-train: configuration error: unknown config key 'train.itres' (refused with or without '+'); "
        "did you mean 'train.iters'?"]


def test_key_in_the_wrong_section_and_unknown_key(tmp_path):
    proc = _run("nvlm-train", "train.lr=1e-3", "+model.vision.qk_nrom=true", cwd=tmp_path)
    assert proc.returncode == 2
    assert _error_lines(proc) == [
        "nvlm-train: configuration error: unknown config key 'train.lr' (refused with or without '+'); "
        "did you mean 'optimizer.lr'?"]
    proc = _run("nvlm-train", "+run.colour=red", cwd=tmp_path)
    assert proc.returncode == 2
    assert _error_lines(proc) == [
        "nvlm-train: configuration error: unknown config key 'run.colour' (refused with or without '+'); "
        "keys of run: dir, name, wandb_mode, wandb_project"]


def test_custom_data_needs_a_recipe(tmp_path):
    proc = _run("nvlm-train", "data=custom", "run.wandb_mode=disabled", cwd=tmp_path)
    assert proc.returncode == 2
    assert _error_lines(proc) == [
        "nvlm-train: configuration error: data.recipe is not set: data=custom needs data.recipe=<a name in "
        "data_recipes/ or a YAML path> (and usually data.data_root=<folder of its shards>)"]


@pytest.mark.slow
def test_demo_data_refuses_data_root_and_bad_paths_say_what_was_found(tmp_path):
    shards = tmp_path / "shards"
    (shards / "train").mkdir(parents=True)
    (shards / "train" / "train-000000.tar").write_text("not a tar")
    common = ["run.wandb_mode=disabled", f"run.dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'cache'}"]
    proc = _run("nvlm-train", f"data.data_root={shards}", *common, cwd=tmp_path)
    assert proc.returncode == 2
    assert _error_lines(proc) == [
        f"nvlm-train: configuration error: data.data_root={shards} is not read with data.build_demo=true "
        f"(data=demo builds its own synthetic shards in data.cache_dir); to train on your shards use data=custom "
        f"data.recipe=<recipe> data.data_root=<folder>, or add data.build_demo=false to read the demo recipe's "
        f"shards from data.data_root"]

    proc = _run("nvlm-train", "data=custom", "data.recipe=demo", f"data.data_root={shards}", *common,
                cwd=tmp_path, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert _error_lines(proc) == [
        f"nvlm-train: recipe demo ({REPO}/data_recipes/demo.yaml, data_root {shards}) has no readable samples in "
        f"any dataset. dataset 'synth-conversations': {shards}/train/train-*.tar matched 1 file(s), none readable "
        f"(train-000000.tar: not a readable tar (ReadError: truncated header)). dataset 'synth-captions': "
        f"{shards}/captions/captions-*.tar matched nothing ({shards}/captions does not exist; {shards} holds "
        f"train). Shards must be webdataset .tar files (nvlm-data build-shards writes them from loose files); "
        f"check data.data_root and the recipe's paths"]
