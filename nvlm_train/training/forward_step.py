"""The forward step megatron-core's pipeline schedules call for each micro-batch.

Every pipeline stage reads positions and packing keys; labels and the loss mask matter on the
last stage, pixels on the first (``training.batches`` sends each stage only those). The loss
function returns the masked SUM and the
assistant-token count, so with ``calculate_per_token_loss`` the global loss is the mean over
all assistant tokens of the global batch, whatever the micro-batching or DP layout.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import torch

from nvlm_train.model.nvlm_d import check_image_slots
from nvlm_train.model.packing import check_positions
from nvlm_train.vision.route import IMAGE_KEYS, batch_pixels, batch_tiles

# Read on the host to build the packed-attention tables: moving them would cost a device sync.
HOST_KEYS = ("seq_boundaries", "num_samples")


def to_device(batch: dict, device: torch.device | str, needs_pixels: bool = True) -> dict:
    """Move a batch to ``device``; a device-route batch gets its ``pixel_values`` cut there.

    ``needs_pixels=False`` (later pipeline stages) leaves the pixels behind, whichever route made
    them: only the first stage runs the vision model.
    """
    out = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) and k not in HOST_KEYS else v)
           for k, v in batch.items() if k not in IMAGE_KEYS}
    pixels = batch_pixels(batch, device) if needs_pixels else None
    if pixels is not None:
        out["pixel_values"] = pixels
    return out


def _unwrap(model):
    """The NVLM-D chunk inside megatron's DDP wrappers."""
    while not hasattr(model, "pre_process") and hasattr(model, "module"):
        model = model.module
    return model


def masked_loss(loss_mask: torch.Tensor, per_token_loss: torch.Tensor):
    """-> (loss sum, token count, reported values) for megatron's schedules."""
    mask = loss_mask.to(per_token_loss.dtype)
    loss_sum = (per_token_loss * mask).sum()
    num_tokens = mask.sum().to(torch.int)
    report = torch.stack([loss_sum.detach(), mask.sum().detach()])
    return loss_sum, num_tokens, {"lm loss": report}


def forward_step(data_iterator: Iterator[dict], model):
    batch = next(data_iterator)
    device = next(model.parameters()).device
    chunk = _unwrap(model)
    first = getattr(chunk, "pre_process", True)
    if batch["tokens"].device.type == "cpu":  # checked on the host, before the copy: no device sync
        if batch.get("seq_boundaries") is not None:
            check_positions(batch["position_ids"], batch["seq_boundaries"])
        if first and hasattr(chunk, "model_cfg"):
            check_image_slots(batch["tokens"], batch_tiles(batch) * chunk.model_cfg.tokens_per_tile,
                              chunk.image_token_id)
    batch = to_device(batch, device, needs_pixels=first)
    output = model(
        batch["tokens"],
        batch["position_ids"],
        labels=batch.get("labels"),  # None before the last stage
        pixel_values=batch.get("pixel_values"),
        seq_boundaries=batch.get("seq_boundaries"),
        num_samples=batch.get("num_samples"),
    )
    return output, partial(masked_loss, batch.get("loss_mask"))  # megatron calls it on the last stage only
