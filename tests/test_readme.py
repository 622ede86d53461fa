"""Every command the README marks as tested is checked.

* ``<!-- tested: run -->`` blocks are executed (in a temporary directory, with the venv on PATH);
* ``<!-- tested: compose -->`` blocks: each ``nvlm-train``-style command's Hydra overrides must
  compose into a typed TrainConfig (so every group, key and value type in the docs exists), and
  ``nvlm-model-summary`` lines are run;
* ``<!-- tested: cli-flags -->`` blocks: every ``--flag`` used must appear in that subcommand's ``--help``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- tested: (\w[\w-]*) -->\s*```bash\n(.*?)```", re.S)


def _blocks(kind: str) -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    found = []
    for k, body in BLOCK.findall(text):
        if k == kind:
            joined = re.sub(r"\\\n\s*", " ", body)
            found.append([line.strip() for line in joined.splitlines() if line.strip()])
    return found


def _env() -> dict:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def test_readme_has_tested_blocks():
    assert _blocks("run") and _blocks("compose") and _blocks("cli-flags")


@pytest.mark.parametrize("block", range(len(_blocks("run"))))
def test_run_blocks(block, tmp_path):
    for line in _blocks("run")[block]:
        proc = subprocess.run(["bash", "-c", line], cwd=REPO, env=_env(), capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, f"{line}\n{proc.stderr[-2000:]}"


def _overrides(tokens: list[str]) -> list[str]:
    out = []
    for tok in tokens:
        if "=" in tok and not tok.startswith("-") and not re.match(r"^[A-Z_]+=", tok):
            key, value = tok.split("=", 1)
            out.append(f"{key}={value.split(',')[0]}")  # a sweep's first value
    return out


def test_compose_blocks():
    from nvlm_train.config.store import compose_config, to_dataclass
    from nvlm_train.config.train import TrainConfig

    checked = 0
    for block in _blocks("compose"):
        for line in block:
            tokens = shlex.split(line)
            if "nvlm-model-summary" in tokens[0]:
                proc = subprocess.run(tokens, env=_env(), capture_output=True, text=True, timeout=300, cwd=REPO)
                assert proc.returncode == 0, proc.stderr[-2000:]
                continue
            assert any(t.endswith(("nvlm_train.cli.train", "torchrun.sh", "train.sbatch", "nvlm-train"))
                       for t in tokens), line
            cfg = to_dataclass(compose_config("train", _overrides(tokens)))
            assert isinstance(cfg, TrainConfig)
            tp_pp = cfg.parallel.tp * cfg.parallel.pp
            cfg.parallel.validate(tp_pp, cfg.model.language.num_layers)
            checked += 1
    assert checked >= 4


def test_cli_flag_blocks():
    for block in _blocks("cli-flags"):
        for line in block:
            tokens = shlex.split(line)
            cmd = tokens[:2]  # e.g. nvlm-convert hf-to-mcore
            help_ = subprocess.run([*cmd, "--help"], env=_env(), capture_output=True, text=True, timeout=120)
            assert help_.returncode == 0, help_.stderr
            for flag in (t for t in tokens[2:] if t.startswith("--")):
                assert flag in help_.stdout, f"{flag} not in `{' '.join(cmd)} --help`"
