"""Exporting streams: peak memory stays far below the checkpoint size (measured in a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.convert.helpers import REPO
from tests.convert.workers import synthetic_worker
from tests.dist import run_ranks

MEASURE = """
import json, sys
from pathlib import Path
import transformers  # noqa: F401  (the HF shape check imports it: part of the fixed baseline)
import nvlm_train.hf.modeling_nvlm_d  # noqa: F401
from nvlm_train.convert.export import ExportOptions, export_checkpoint
from nvlm_train.convert.dcp_reader import DistCheckpointReader, checkpoint_folder
size = DistCheckpointReader(checkpoint_folder(Path(sys.argv[1]))).nbytes()
def hwm():  # own high-water RSS (ru_maxrss would inherit pytest's across fork/exec)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) * 1024
base = hwm()
r = export_checkpoint(ExportOptions(Path(sys.argv[1]), Path(sys.argv[2]), max_shard_bytes=64 << 20, progress=False))
peak = hwm()
print(json.dumps(dict(size=size, base=base, peak=peak, shards=r.num_shards, written=r.bytes_written,
                      seconds=r.seconds)))
"""


@pytest.mark.multirank
def test_export_peak_memory_is_far_below_checkpoint_size(tmp_path, demo_tokenizer):
    ckpt = tmp_path / "big"
    run_ranks(synthetic_worker, 1, str(ckpt), str(demo_tokenizer), 40, 512)
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(ckpt), str(tmp_path / "hf")], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"checkpoint {m['size'] / 1e6:.0f} MB, RSS after imports {m['base'] / 1e6:.0f} MB, "
          f"peak {m['peak'] / 1e6:.0f} MB (+{(m['peak'] - m['base']) / 1e6:.0f} MB), "
          f"{m['shards']} shards, {m['seconds']:.1f} s")
    assert m["size"] > 300e6 and m["written"] > 0.95 * m["size"]
    assert m["peak"] - m["base"] < 0.1 * m["size"]  # conversion itself: a few layers' worth, not the model
    assert m["peak"] < m["size"]
