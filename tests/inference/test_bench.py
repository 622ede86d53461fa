"""``bench/generate_throughput.py --smoke`` runs, reports both rates and their ratio, and the engine's
tokens equal the old no-cache loop's."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.convert.helpers import REPO


def test_generate_throughput_smoke(tiny_ckpt):
    proc = subprocess.run([sys.executable, "bench/generate_throughput.py", "--smoke", "--checkpoint", str(tiny_ckpt)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["same_tokens"] and r["prompts"] == 4 and r["tiles_total"] > 2
    assert r["engine_tokens_per_s"] > 0 and r["old_loop_tokens_per_s"] > 0
    assert abs(r["engine_over_old_loop"] - r["engine_tokens_per_s"] / r["old_loop_tokens_per_s"]) < 1e-6
    help_text = subprocess.run([sys.executable, "bench/generate_throughput.py", "--help"], cwd=REPO,
                               capture_output=True, text=True, timeout=120).stdout
    assert "--smoke" in help_text and "--new-tokens" in help_text
