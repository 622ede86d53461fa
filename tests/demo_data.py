"""The small synthetic demo dataset the training and conversion tests train on (sizes and seed)."""

from __future__ import annotations

from pathlib import Path

DEMO_TRAIN, DEMO_HELDOUT, SEED = 240, 24, 1234


def build_demo_cache(cache: Path) -> Path:
    """A data cache holding the demo shards the trainer expects for these sizes and seed."""
    from nvlm_train.data.synth import demo_data_root, write_synthetic_shards

    root = demo_data_root(cache, DEMO_TRAIN, DEMO_HELDOUT, SEED)
    write_synthetic_shards(root, DEMO_TRAIN, DEMO_HELDOUT, seed=SEED)
    (root / ".complete").write_text("ok\n")
    return cache
