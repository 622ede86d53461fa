"""Held-out exact-match accuracy of an HF NVLM-D export, used exactly as the model card shows.

``python -m nvlm_train.cli.demo_eval hf --hf DIR --data-root DEMO_DATA`` loads the export with
``AutoModel.from_pretrained(..., trust_remote_code=True)`` and ``AutoTokenizer(use_fast=False)``,
tiles each image with the card's ``load_image`` semantics and asks ``model.chat``. Prints one JSON
line: accuracy, correct, total, per-task accuracy.
"""

from __future__ import annotations

import sys
from collections import Counter

import torch
from tqdm import tqdm


def evaluate_hf(hf_dir: str, data_root: str, limit: int | None = None, max_tiles: int | None = None) -> dict:
    from transformers import AutoModel, AutoTokenizer

    from nvlm_train.data.synth import read_heldout
    from nvlm_train.vision.tiling import load_image

    model = AutoModel.from_pretrained(hf_dir, torch_dtype=torch.float32, low_cpu_mem_usage=True,
                                      use_flash_attn=False, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(hf_dir, trust_remote_code=True, use_fast=False)
    size = model.config.force_image_size or model.config.vision_config.image_size
    max_num = max_tiles or model.config.max_dynamic_patch
    items = read_heldout(data_root)[:limit]
    correct, per_task, totals = 0, Counter(), Counter()
    generation_config = dict(max_new_tokens=8, do_sample=False)
    for item in tqdm(items, desc="HF chat eval", file=sys.stderr, mininterval=2):
        pixel_values = load_image(item.image, input_size=size, max_num=max_num).to(torch.float32)
        response = model.chat(tokenizer, pixel_values, item.question, generation_config)
        ok = response.strip() == item.answer
        correct += ok
        per_task[item.task] += ok
        totals[item.task] += 1
    return {"accuracy": correct / max(1, len(items)), "correct": correct, "total": len(items),
            "per_task": {t: per_task[t] / totals[t] for t in totals}}
