"""``verify`` at scale, on a 40-layer thin model: the HF side streams one block at a time (its peak RSS is
a few layers, measured), and one corrupted tensor in the export fails ``nvlm-convert verify`` (exit 2)
naming its layer. One subprocess runs both verifications (the measured one first)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from tests.convert.helpers import REPO
from tests.dist import run_ranks

pytestmark = pytest.mark.multirank

LAYERS, HIDDEN = 40, 384
CORRUPT = "language_model.model.layers.17.mlp.down_proj.weight"

MEASURE = """
import contextlib, io, json, sys
from nvlm_train.cli.convert import main as nvlm_convert
from nvlm_train.convert import hf_streaming
from nvlm_train.convert.verify import verify

def status(key):
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) * 1024

marks = {}
original = hf_streaming.StreamedHF.__init__
def measured_init(self, *args, **kwargs):  # the HF phase starts: note RSS, reset the high-water mark
    marks["peak_before_hf"] = status("VmHWM")
    marks["hf_start"] = status("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")
    original(self, *args, **kwargs)
hf_streaming.StreamedHF.__init__ = measured_init

if __name__ == "__main__":
    ckpt, good, bad = sys.argv[1:]
    marks["base"] = status("VmRSS")
    report = verify(ckpt, good, max_new_tokens=4)
    marks["hf_peak"] = status("VmHWM")
    hf_streaming.StreamedHF.__init__ = original
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = nvlm_convert(["verify", "--checkpoint", ckpt, "--hf", bad, "--max-new-tokens", "4"])
    print(json.dumps(dict(marks, ok=report.ok, blocks=[c.blocks_compared for c in report.cases],
                          block_bytes=report.hf_peak_block_bytes, bad_rc=rc, bad_stdout=out.getvalue())))
"""


def thin_worker(rank, world, out_root, tokenizer_dir):
    """A 40-layer, 384-wide LLM (ViT as nvlm_d_tiny), randomly initialised, saved at TP1."""
    import yaml

    from nvlm_train.checkpoint import dist as ckpt
    from nvlm_train.config.choices import to_plain
    from nvlm_train.config.parallel import ParallelConfig
    from nvlm_train.config.store import load_model_config
    from nvlm_train.model.builder import build_model
    from nvlm_train.runtime.session import distributed_session

    model = load_model_config("nvlm_d_tiny", [
        f"model.language.num_layers={LAYERS}", f"model.language.hidden_size={HIDDEN}",
        "model.language.num_attention_heads=6", f"model.language.ffn_hidden_size={3 * HIDDEN}"])
    with distributed_session(ParallelConfig(), seed=4):
        built = build_model(model, ParallelConfig())
        config_yaml = yaml.safe_dump({"model": to_plain(model), "data": {"tokenizer_dir": str(tokenizer_dir)}})
        ckpt.save_checkpoint(Path(out_root), built.chunks, None, None, {}, ckpt.TrainingState(iteration=1),
                             config_yaml, keep_last=1)
    return True


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_tokenizer):
    """(export size, the subprocess's measurements) for the thin model and a copy with one tensor changed."""
    from nvlm_train.convert.export import ExportOptions, export_checkpoint

    root = tmp_path_factory.mktemp("verify_scale")
    ckpt, hf, bad = root / "ckpt", root / "hf", root / "bad"
    run_ranks(thin_worker, 1, str(ckpt), str(demo_tokenizer))
    export_checkpoint(ExportOptions(ckpt, hf, max_shard_bytes=16 << 20, progress=False))
    bad.mkdir()
    shard = json.loads((hf / "model.safetensors.index.json").read_text())["weight_map"][CORRUPT]
    for f in hf.iterdir():
        if f.name != shard:
            (bad / f.name).symlink_to(f)
    state = load_file(str(hf / shard))
    state[CORRUPT] = state[CORRUPT] + 0.05
    save_file(state, str(bad / shard), metadata={"format": "pt"})
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(ckpt), str(hf), str(bad)], cwd=REPO,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    size = sum(p.stat().st_size for p in hf.glob("*.safetensors"))
    return size, json.loads(proc.stdout.strip().splitlines()[-1])


def test_verify_streams_the_export_a_few_layers_at_a_time(runs):
    size, m = runs
    hf_extra = m["hf_peak"] - m["hf_start"]
    print(f"export {size / 1e6:.0f} MB, largest block {m['block_bytes'] / 1e6:.1f} MB; HF phase peak "
          f"+{hf_extra / 1e6:.0f} MB over its start; whole verify peak "
          f"+{(max(m['peak_before_hf'], m['hf_peak']) - m['base']) / 1e6:.0f} MB over the imports")
    assert m["ok"] and m["blocks"][1:] == [2 + 1 + LAYERS] * 3 and m["blocks"][0] == LAYERS
    assert size > 200e6
    # Loading the export (the old verify) would add the whole model; streaming holds a few blocks.
    assert hf_extra < 0.15 * size
    assert m["block_bytes"] < 0.05 * size


def test_one_corrupted_tensor_fails_naming_its_layer(runs):
    _, m = runs
    assert m["bad_rc"] == 2 and "FAILED" in m["bad_stdout"]
    assert "first diverging block: text: language_model.model.layers.17 " in m["bad_stdout"], m["bad_stdout"]
