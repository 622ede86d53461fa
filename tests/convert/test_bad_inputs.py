"""Bad inputs fail with messages naming the problem, and never leave a partial output behind."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint import FileSystemReader

from nvlm_train.checkpoint.reader import DistCheckpointReader
from nvlm_train.convert.errors import ConvertError
from nvlm_train.convert.export import ExportOptions, export_checkpoint
from nvlm_train.convert.importer import ImportOptions, import_hf
from tests.convert.helpers import cli


def _no_leftovers(out):
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))


def _edit_hf(src, dst, edit):
    shutil.copytree(src, dst)
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    for shard in set(index["weight_map"].values()):
        state = load_file(str(dst / shard))
        edit(state)
        save_file(state, str(dst / shard), metadata={"format": "pt"})
        for k in list(index["weight_map"]):
            if index["weight_map"][k] == shard and k not in state:
                del index["weight_map"][k]
    (dst / "model.safetensors.index.json").write_text(json.dumps(index))


def test_wrong_folders(hf_source, ckpt_tp1, tmp_path):
    out = tmp_path / "out"
    proc = cli("mcore-to-hf", "--checkpoint", str(hf_source), "--out", str(out), check=False)
    assert proc.returncode == 1 and "is not a checkpoint" in proc.stderr, proc.stderr
    _no_leftovers(out)
    with pytest.raises(ConvertError, match="config.json not found"):
        import_hf(ImportOptions(out=out, hf=ckpt_tp1, progress=False))
    with pytest.raises(ConvertError, match="either --hf"):
        import_hf(ImportOptions(out=out, progress=False))
    _no_leftovers(out)


def test_model_config_preset_mismatch(tmp_path):
    from tests.fixtures.hf_builders import build_tiny_export

    other = build_tiny_export(tmp_path / "other", seed=0)  # a different tiny architecture
    expected = "(?s)differs from --model-config nvlm_d_tiny:.*model.vision.hidden_size: HF 40, nvlm_d_tiny 80"
    with pytest.raises(ConvertError, match=expected):
        import_hf(ImportOptions(out=tmp_path / "out", hf=other, model_config="nvlm_d_tiny", progress=False))
    _no_leftovers(tmp_path / "out")


def test_missing_and_misshaped_hf_keys(hf_source, tmp_path):
    out = tmp_path / "out"
    missing = "language_model.model.layers.2.mlp.up_proj.weight"
    _edit_hf(hf_source, tmp_path / "missing", lambda s: s.pop(missing, None))
    with pytest.raises(ConvertError, match=f"missing keys: {missing}"):
        import_hf(ImportOptions(out=out, hf=tmp_path / "missing", progress=False))

    def transpose(state):
        if "mlp1.1.weight" in state:
            state["mlp1.1.weight"] = state["mlp1.1.weight"].t().contiguous()

    _edit_hf(hf_source, tmp_path / "shape", transpose)
    with pytest.raises(ConvertError, match=r"mis-shaped keys: mlp1.1.weight has \[320, 128\], expected \[128, 320\]"):
        import_hf(ImportOptions(out=out, hf=tmp_path / "shape", progress=False))

    _edit_hf(hf_source, tmp_path / "extra", lambda s: s.setdefault("vision_model.extra.weight", torch.zeros(2)))
    with pytest.raises(ConvertError, match="unexpected keys: vision_model.extra.weight"):
        import_hf(ImportOptions(out=out, hf=tmp_path / "extra", progress=False))
    _no_leftovers(out)


def _copy_ckpt(ckpt, dst):
    shutil.copytree(ckpt, dst)
    return dst / "iter_0000000"


def test_missing_and_misshaped_checkpoint_keys(ckpt_tp1, tmp_path):
    out = tmp_path / "out"
    folder = _copy_ckpt(ckpt_tp1, tmp_path / "missing")
    md = FileSystemReader(str(folder)).read_metadata()
    del md.state_dict_metadata["language_model.decoder.final_layernorm.weight"]
    (folder / ".metadata").write_bytes(pickle.dumps(md))
    with pytest.raises(ConvertError, match="missing keys: language_model.decoder.final_layernorm.weight"):
        export_checkpoint(ExportOptions(folder, out, progress=False))

    folder = _copy_ckpt(ckpt_tp1, tmp_path / "shape")
    common = torch.load(folder / "common.pt", weights_only=False)
    cfg = yaml.safe_load(common["config"])
    cfg["model"]["language"]["ffn_hidden_size"] = 96
    common["config"] = yaml.safe_dump(cfg)
    torch.save(common, folder / "common.pt")
    with pytest.raises(ConvertError, match=r"mis-shaped language_model.model.layers.0.mlp.gate_proj.weight: "
                                           r"\[128, 64\] vs HF \[96, 64\]"):
        export_checkpoint(ExportOptions(folder, out, progress=False))
    _no_leftovers(out)


def test_existing_output_and_force(ckpt_tp1, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "marker").write_text("old")
    with pytest.raises(ConvertError, match="already exists; pass --force"):
        export_checkpoint(ExportOptions(ckpt_tp1, out, progress=False))
    assert (out / "marker").is_file()
    with pytest.raises(ConvertError, match="already exists; pass --force"):
        import_hf(ImportOptions(out=out, hf=ckpt_tp1, progress=False))
    export_checkpoint(ExportOptions(ckpt_tp1, out, force=True, progress=False))
    assert not (out / "marker").exists() and (out / "config.json").is_file()
    assert not list(tmp_path.glob(".out.*"))


def test_failure_midway_leaves_nothing(ckpt_tp1, tmp_path, monkeypatch):
    out = tmp_path / "out"
    calls = {"n": 0}
    original = DistCheckpointReader.read

    def flaky(self, key, layer=None):
        calls["n"] += 1
        if calls["n"] > 10:
            raise OSError("disk on fire")
        return original(self, key, layer)

    monkeypatch.setattr(DistCheckpointReader, "read", flaky)
    with pytest.raises(OSError, match="disk on fire"):
        export_checkpoint(ExportOptions(ckpt_tp1, out, max_shard_bytes=50_000, progress=False))
    _no_leftovers(out)


def test_layout_that_cannot_load_the_checkpoint_is_refused(hf_source, tmp_path):
    out = tmp_path / "out"
    # nvlm_d_tiny's LLM has 4 heads in 2 query groups: TP4 cannot split the groups.
    with pytest.raises(ConvertError, match=r"query groups \(2\) is not divisible by --tp 4"):
        import_hf(ImportOptions(out=out, hf=hf_source, tp=4, model_config="nvlm_d_tiny", progress=False))
    # ViT heads padded to a multiple of 2 would need re-padding at TP4 (5 -> 6 at TP1, 8 at TP4).
    with pytest.raises(ConvertError, match="raise --vision-head-multiple"):
        import_hf(ImportOptions(out=out, hf=hf_source, tp=4, vision_head_multiple=2, progress=False))
    proc = cli("hf-to-mcore", "--hf", str(hf_source), "--out", str(out), "--pp", "3", check=False)
    assert proc.returncode == 1 and "not divisible by parallel.pp = 3" in proc.stderr, proc.stderr
    _no_leftovers(out)


def test_truncated_safetensors_is_named(hf_source, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(hf_source, broken)
    shard = sorted(broken.glob("*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ConvertError, match=f"cannot read {shard}.*does not fit the file"):
        import_hf(ImportOptions(out=tmp_path / "out", hf=broken, progress=False))
    _no_leftovers(tmp_path / "out")


def test_read_error_while_writing_keeps_its_message(hf_source, tmp_path, monkeypatch):
    """A shard that breaks after the up-front checks fails inside the DCP writer: same message, no output."""
    from nvlm_train.convert import hf_source as source

    real_get = source.HFWeights.get

    def flaky_get(self, key):
        if key.endswith("mlp.down_proj.weight"):
            raise ConvertError(f"cannot read {key!r}: file ends early")
        return real_get(self, key)

    monkeypatch.setattr(source.HFWeights, "get", flaky_get)
    out = tmp_path / "out"
    with pytest.raises(ConvertError, match="down_proj.weight'?: file ends early"):
        import_hf(ImportOptions(out=out, hf=hf_source, progress=False))
    _no_leftovers(out)
