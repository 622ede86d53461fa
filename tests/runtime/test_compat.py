"""megatron-core's per-layer "Unknown MLP type" warning is silenced for our ViT layers, on checked versions only."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from nvlm_train.runtime import compat as megatron_quirks


def test_model_summary_prints_no_unknown_mlp_warning(tmp_path):
    script = Path(sys.executable).parent / "nvlm-model-summary"
    proc = subprocess.run([str(script), "model=nvlm_d_72b"], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '"total": 78863416704' in proc.stdout
    assert "Unknown MLP type" not in proc.stderr


def test_filter_is_scoped_and_version_checked(caplog, monkeypatch):
    assert megatron_quirks.quirk_applies("0.16.1") and not megatron_quirks.quirk_applies("0.17.0")
    logger = logging.getLogger("megatron.core.transformer.transformer_layer")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        with megatron_quirks.no_unknown_mlp_warning():
            logger.warning("Unknown MLP type: <class 'ModuleSpec'>. Using default kwargs.")
            logger.warning("something else")
        logger.warning("Unknown MLP type: outside the block")
        monkeypatch.setattr(megatron_quirks, "quirk_applies", lambda: False)
        with megatron_quirks.no_unknown_mlp_warning():
            logger.warning("Unknown MLP type: unchecked megatron version")
    assert [r.getMessage() for r in caplog.records] == [
        "something else", "Unknown MLP type: outside the block", "Unknown MLP type: unchecked megatron version"]
