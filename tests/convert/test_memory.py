"""Both directions stream: peak memory stays far below the checkpoint size (measured in a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.convert.helpers import REPO
from tests.convert.workers import synthetic_worker
from tests.dist import run_ranks

pytestmark = pytest.mark.multirank

MEASURE = """
import json, sys
from pathlib import Path
import transformers  # noqa: F401  (the HF shape check imports it: part of the fixed baseline)
import nvlm_train.hf.modeling_nvlm_d  # noqa: F401
from nvlm_train.convert.export import ExportOptions, export_checkpoint
from nvlm_train.convert.importer import ImportOptions, import_hf
from nvlm_train.checkpoint.layout import resolve_checkpoint
from nvlm_train.checkpoint.reader import DistCheckpointReader
if sys.argv[1] == "import":  # megatron's model code is part of the fixed baseline for the import
    import nvlm_train.checkpoint.streaming_save, nvlm_train.model.builder  # noqa: F401,E401
def hwm():  # own high-water RSS (ru_maxrss would inherit pytest's across fork/exec)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) * 1024
mode, src, dst = sys.argv[1:]
base = hwm()
if mode == "export":
    size = DistCheckpointReader(resolve_checkpoint(Path(src))[0]).nbytes()
    r = export_checkpoint(ExportOptions(Path(src), Path(dst), max_shard_bytes=64 << 20, progress=False))
    written = r.bytes_written
else:
    size = sum(p.stat().st_size for p in Path(src).glob("*.safetensors"))
    import_hf(ImportOptions(out=Path(dst), hf=Path(src), progress=False))
    written = DistCheckpointReader(resolve_checkpoint(Path(dst))[0]).nbytes()
print(json.dumps(dict(size=size, base=base, peak=hwm(), written=written)))
"""


def _measure(mode: str, src, dst) -> dict:
    proc = subprocess.run([sys.executable, "-c", MEASURE, mode, str(src), str(dst)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{mode}: {m['size'] / 1e6:.0f} MB, RSS after imports {m['base'] / 1e6:.0f} MB, "
          f"peak {m['peak'] / 1e6:.0f} MB (+{(m['peak'] - m['base']) / 1e6:.0f} MB)")
    assert m["size"] > 300e6 and m["written"] > 0.95 * m["size"]
    # The conversion itself holds a few of the 40 layers (the one being written, the merge's inputs and
    # output, the writer's per-key buffers), never the model.
    assert m["peak"] - m["base"] < 0.15 * m["size"]
    return m


@pytest.fixture(scope="module")
def big_checkpoint(tmp_path_factory, demo_tokenizer):
    ckpt = tmp_path_factory.mktemp("memory") / "big"
    run_ranks(synthetic_worker, 1, str(ckpt), str(demo_tokenizer), 40, 512)
    return ckpt


def test_export_and_import_peak_memory_is_far_below_checkpoint_size(big_checkpoint, tmp_path):
    _measure("export", big_checkpoint, tmp_path / "hf")
    _measure("import", tmp_path / "hf", tmp_path / "back")
