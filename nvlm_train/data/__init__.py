"""Data pipeline: webdataset shards -> tiled, tile-tagged, tokenised, packed micro-batches.

Modules (one job each): ``images`` (safe decoding),
``samples`` (raw sample -> conversation), ``prompt`` (ChatML + image expansion), ``tokenizer``
(tokenizer loading, demo tokenizer), ``encode`` (tokens, loss targets, token budget), ``packing``
(rows and the batch dict), ``shards`` (tar indexing and random access), ``order`` (blend and DP
sharding), ``recipe`` (YAML blends), ``loader`` (the resumable iterator), ``synth``, ``stats``,
``build_shards``, ``inspect_sample`` (tools); tiles are cut by ``nvlm_train.vision``. Import from the
submodules; the names below are
re-exported lazily so ``import nvlm_train.data`` stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DataConfig": "loader", "MultimodalLoader": "loader", "build_loader": "loader",
    "format_chatml": "prompt", "expand_image_placeholders": "prompt",
    "build_demo_tokenizer": "tokenizer", "TextTokenizer": "tokenizer",
    "write_synthetic_shards": "synth", "read_heldout": "synth",
    "load_recipe": "recipe",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"nvlm_train.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'nvlm_train.data' has no attribute {name!r}")
