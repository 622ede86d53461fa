"""Our export's ``chat()`` on transformers 4.39.3 (the version the released NVLM-D Dockerfile pins) gives
what it gives on the installed transformers: same prompt, same greedy replies, same history."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

OLD = ("transformers==4.39.3", "tokenizers==0.15.2", "huggingface_hub==0.23.5")
TARGET = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nvlm_train" / "transformers-4.39.3"

SCRIPT = r"""
import json, sys, torch
from transformers import AutoModel, AutoTokenizer, __version__
path = sys.argv[1]
model = AutoModel.from_pretrained(path, torch_dtype=torch.float32, trust_remote_code=True, use_flash_attn=False).eval()
tok = AutoTokenizer.from_pretrained(path, trust_remote_code=True, use_fast=False)
pv = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
gen = dict(max_new_tokens=6, do_sample=False)
r1, hist = model.chat(tok, pv, "Please describe the image shortly.", gen, history=None, return_history=True)
r2, hist = model.chat(tok, pv, "And the colour?", gen, history=hist, return_history=True)
r3 = model.chat(tok, None, "Hello, who are you?", gen)
query = model.build_chat_query("<image>\nQ", None, [2])
print(json.dumps({"version": __version__, "replies": [r1, r2, r3], "history": hist, "query": query}))
"""


def _old_transformers() -> Path:
    if not (TARGET / "transformers-4.39.3.dist-info").is_dir():
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(TARGET),
                               *OLD], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:  # no package index here: nothing to test against, said plainly
            pytest.skip(f"could not install {' '.join(OLD)} (no package index?): {proc.stderr.strip()[-300:]}")
    return TARGET


def _chat(export: Path, tmp_path: Path, pythonpath: str | None) -> dict:
    script = tmp_path / "chat.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_MODULES_CACHE": str(tmp_path / f"modules-{bool(pythonpath)}")}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    proc = subprocess.run([sys.executable, str(script), str(export)], capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(900)
def test_chat_on_transformers_4_39_equals_current(tiny_export_dir, tmp_path):
    old = _chat(tiny_export_dir, tmp_path, str(_old_transformers()))
    new = _chat(tiny_export_dir, tmp_path, None)
    assert old["version"] == "4.39.3" and new["version"] != "4.39.3"
    assert old["query"].startswith("<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n<Image>")
    assert {k: v for k, v in old.items() if k != "version"} == {k: v for k, v in new.items() if k != "version"}
    assert len(old["history"]) == 2 and old["history"][0][0] == "<image>\nPlease describe the image shortly."
