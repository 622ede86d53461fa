"""HF -> mcore -> HF is bit-identical, dtype kept unless asked; the CLI's surface."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from safetensors.torch import save_file

from nvlm_train.convert.dcp_reader import DistCheckpointReader, checkpoint_folder
from nvlm_train.convert.export import ExportOptions, export_checkpoint
from tests.convert.helpers import REPO, assert_bit_identical, cli, load_export


def test_hf_to_mcore_to_hf_is_bit_identical(hf_source, ckpt_tp1, tmp_path):
    assert (ckpt_tp1 / "latest_checkpointed_iteration.txt").read_text().strip() == "0"
    assert (ckpt_tp1 / "iter_0000000" / "metadata.json").is_file()
    export_checkpoint(ExportOptions(ckpt_tp1, tmp_path / "hf", progress=False))
    assert_bit_identical(load_export(hf_source), load_export(tmp_path / "hf"))


def test_bf16_is_kept_and_dtype_flag_casts(hf_source, tmp_path):
    src = tmp_path / "bf16"
    src.mkdir()
    for f in hf_source.iterdir():
        if f.suffix != ".safetensors":
            (src / f.name).write_bytes(f.read_bytes())
    index = json.loads((hf_source / "model.safetensors.index.json").read_text())
    state = {k: v.to(torch.bfloat16) for k, v in load_export(hf_source).items()}
    for shard in set(index["weight_map"].values()):
        save_file({k: state[k] for k, s in index["weight_map"].items() if s == shard}, str(src / shard),
                  metadata={"format": "pt"})
    ckpt = tmp_path / "ckpt"
    cli("hf-to-mcore", "--hf", str(src), "--out", str(ckpt), "--no-progress")
    with DistCheckpointReader(checkpoint_folder(ckpt)) as reader:
        assert reader.dtype("language_model.decoder.layers.mlp.linear_fc1.weight") == torch.bfloat16
    export_checkpoint(ExportOptions(ckpt, tmp_path / "out_bf16", progress=False))
    assert_bit_identical(state, load_export(tmp_path / "out_bf16"))
    assert json.loads((tmp_path / "out_bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    export_checkpoint(ExportOptions(ckpt, tmp_path / "out_fp32", dtype="fp32", progress=False))
    assert_bit_identical({k: v.float() for k, v in state.items()}, load_export(tmp_path / "out_fp32"))


def test_help_and_wrapper():
    for args in ([], ["hf-to-mcore"], ["mcore-to-hf"], ["verify"]):
        proc = subprocess.run([sys.executable, "tools/convert/nvlm_convert.py", *args, "--help"], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "usage: nvlm-convert" in proc.stdout, proc.stderr
    assert "--checkpoint" in proc.stdout and "--tolerance" in proc.stdout
