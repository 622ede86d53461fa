"""The two ways a model answers benchmark questions, behind one ``generate`` call.

* ``EngineBackend``: a megatron checkpoint through the generation engine (``inference/engine.py``)
  at the launched TP/PP; collective (every rank calls it with the same requests).
* ``HFBackend``: an HF export loaded as the model card does (``AutoModel.from_pretrained(...,
  trust_remote_code=True)``, ``device_map`` spreading it over the GPUs when there are several), asked
  through its ``chat()`` with the export's prompt preset; the benchmark's system turn replaces the
  preset's one for the call.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

import torch

from nvlm_train.inference.engine import GenerationRequest, GenerationResult, SamplingConfig


class Backend(Protocol):
    label: str  # the row name in results.md
    fingerprint: str  # what the per-sample cache is valid for

    def generate(self, requests: list[GenerationRequest], sampling: SamplingConfig,
                 max_tiles: int | None) -> list[GenerationResult]: ...  # None: the model's own setting


class EngineBackend:
    """A ``GenerationEngine`` (or anything with its ``generate`` and ``max_tiles``)."""

    def __init__(self, engine, label: str, fingerprint: str):
        self.engine, self.label, self.fingerprint = engine, label, fingerprint
        self.own_max_tiles = engine.max_tiles  # the checkpoint's training setting

    @classmethod
    def from_checkpoint(cls, path: str | Path, batch_size: int = 8) -> EngineBackend:
        """Collective: inside a distributed session at the launched layout."""
        from nvlm_train.inference.engine import GenerationEngine

        engine = GenerationEngine.from_checkpoint(path, batch_size=batch_size)
        run = engine.saved_run
        return cls(engine, f"megatron {run.folder.name}", f"megatron:{Path(run.folder).resolve()}")

    def generate(self, requests, sampling, max_tiles):
        self.engine.max_tiles = max_tiles or self.own_max_tiles
        return self.engine.generate(requests, sampling)


class HFBackend:
    def __init__(self, model, tokenizer, label: str, fingerprint: str):
        self.model, self.tokenizer, self.label, self.fingerprint = model, tokenizer, label, fingerprint
        self.image_size = model.config.force_image_size or model.config.vision_config.image_size

    @classmethod
    def load(cls, hf_dir: str | Path, device_map: str | None = None, dtype: torch.dtype | None = None) -> HFBackend:
        from transformers import AutoModel, AutoTokenizer

        if device_map is None and torch.cuda.is_available():
            device_map = "auto"
        dtype = dtype or (torch.bfloat16 if torch.cuda.is_available() else torch.float32)
        model = AutoModel.from_pretrained(str(hf_dir), torch_dtype=dtype, low_cpu_mem_usage=True,
                                          use_flash_attn=False, trust_remote_code=True,
                                          **({"device_map": device_map} if device_map else {})).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(hf_dir), trust_remote_code=True, use_fast=False)
        resolved = Path(hf_dir).resolve()
        return cls(model, tokenizer, f"HF {resolved.name}", f"hf:{resolved}")

    def _pixels(self, images, max_tiles: int):
        from nvlm_train.vision.tiling import load_image

        max_num = max_tiles or self.model.config.max_dynamic_patch
        tiles = [load_image(im, input_size=self.image_size, max_num=max_num) for im in images]
        if not tiles:
            return None, None
        dtype = self.model.vision_model.embeddings.patch_embedding.weight.dtype
        return torch.cat(tiles).to(dtype), [t.shape[0] for t in tiles]

    def generate(self, requests, sampling, max_tiles):
        results = []
        config = {"max_new_tokens": sampling.max_new_tokens, "do_sample": False}
        for req in requests:
            t0 = time.perf_counter()
            if len(req.messages) != 1 or req.messages[0][0] != "user":
                raise ValueError("the HF backend asks one user turn per request")
            pixels, patches = self._pixels(req.images, max_tiles)
            saved = self.model.system_message
            if req.system != "preset":
                self.model.system_message = req.system
            try:
                text = self.model.chat(self.tokenizer, pixels, req.messages[0][1], config,
                                       num_patches_list=patches)
            finally:
                self.model.system_message = saved
            results.append(GenerationResult(req.id, text, [], time.perf_counter() - t0, "stop"))
        return results
