"""An HF export run by its own modeling code with its weights read from the safetensors one block at a time.

The model is built with parameters on the meta device (no memory). A forward pre-hook on each block
(a ViT or LLM layer, the embeddings, ``mlp1``, the final norm, ``lm_head``) reads that block's tensors
from the shards (fp32) just before it runs; a forward hook drops them right after. Host memory is a
block's weights plus activations, never the model: for NVLM-D-72B the largest block is the 152064 x
8192 embedding (5.0 GB in fp32); an LLM layer is 3.8 GB.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import torch
from safetensors import safe_open

from nvlm_train.convert.errors import ConvertError

_LAYER = re.compile(r"^(.*?\.layers\.\d+)\.")


def block_of(key: str) -> str:
    """The streamed block a tensor belongs to: a numbered layer, ``mlp1``, or a top-level part."""
    m = _LAYER.match(key)
    if m:
        return m.group(1)
    if key.startswith("mlp1."):
        return "mlp1"
    parts = key.split(".")
    return ".".join(parts[:3 if key.startswith("language_model.model.") else 2])


def _rebuild_meta_buffers(model: torch.nn.Module) -> None:
    """Buffers computed at construction (RoPE's inv_freq) are not in the files: rebuild their modules on CPU."""
    for name, module in list(model.named_modules()):
        own = [b for b in module.buffers(recurse=False) if b.is_meta]
        if not own:
            continue
        if not hasattr(module, "config"):
            raise ConvertError(f"cannot stream the export: {name} has buffers that are neither stored nor rebuildable")
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        with torch.device("cpu"):
            setattr(parent, attr, type(module)(config=module.config))


class StreamedHF:
    """``model`` runs like the loaded export; ``self.model(...)`` reads each block as it is reached."""

    def __init__(self, hf_dir: Path):
        from transformers import AutoConfig, AutoModel

        hf_dir = Path(hf_dir)
        index = hf_dir / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
        else:
            single = hf_dir / "model.safetensors"
            with safe_open(str(single), framework="pt") as f:
                weight_map = {k: single.name for k in f.keys()}  # noqa: SIM118 - not iterable
        self.dir = hf_dir
        self.blocks: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))  # block -> shard -> keys
        for key, shard in weight_map.items():
            self.blocks[block_of(key)][shard].append(key)
        config = AutoConfig.from_pretrained(str(hf_dir), trust_remote_code=True)
        for cfg in (config, getattr(config, "vision_config", None)):
            if cfg is not None and hasattr(cfg, "use_flash_attn"):
                cfg.use_flash_attn = False
        with torch.device("meta"):
            model = AutoModel.from_config(config, trust_remote_code=True, torch_dtype=torch.float32)
        _rebuild_meta_buffers(model)
        self.model = model.eval()
        self._check_coverage()
        for block in self.blocks:
            module = self.model.get_submodule(block)
            module.register_forward_pre_hook(self._loader(block))
            module.register_forward_hook(self._unloader)
        self.peak_block_bytes = 0

    def _check_coverage(self) -> None:
        stored = {k for shards in self.blocks.values() for keys in shards.values() for k in keys}
        needed = set(self.model.state_dict().keys())
        missing, extra = sorted(needed - stored), sorted(stored - needed)
        if missing or extra:
            raise ConvertError(f"the export's tensors do not match its modeling code: missing {missing[:5]}, "
                               f"unexpected {extra[:5]}")

    def _loader(self, block: str):
        def hook(module, args):
            prefix = block + "."
            state = {}
            for shard, keys in self.blocks[block].items():
                with safe_open(str(self.dir / shard), framework="pt") as f:
                    for key in keys:
                        state[key[len(prefix):]] = f.get_tensor(key).to(torch.float32)
            module.load_state_dict(state, strict=True, assign=True)
            size = sum(t.numel() * t.element_size() for t in state.values())
            self.peak_block_bytes = max(self.peak_block_bytes, size)
        return hook

    @staticmethod
    def _unloader(module, args, output):
        module.to("meta")
        return output
