"""Our model's full-vocabulary logits at any TP/PP, for ``verify --tp/--pp``.

Runs megatron's own forward-only pipeline schedule (as the trainer's evaluation does), gathers the
vocab-parallel logits over TP and broadcasts them from the last pipeline stage, so every rank can run
the same greedy loop. Runs inside ``dist_runtime.run_ranks``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist


def _forward_logits(chunks, ids: torch.Tensor, pixels: torch.Tensor | None, vocab: int) -> torch.Tensor:
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func

    s = ids.shape[1]
    device = next(chunks[0].parameters()).device  # CUDA (NCCL) when a GPU is present
    batch = {"tokens": ids.to(device), "position_ids": torch.arange(s, device=device).unsqueeze(0),
             "pixel_values": pixels.to(device) if pixels is not None else None}

    def step(data_iterator, model):
        b = next(data_iterator)
        out = model(b["tokens"], b["position_ids"], pixel_values=b["pixel_values"])
        return out, lambda output, non_loss_data=False: output

    iterators = [iter([batch]) for _ in chunks] if len(chunks) > 1 else iter([batch])
    collected = get_forward_backward_func()(
        forward_step_func=step, data_iterator=iterators, model=chunks if len(chunks) > 1 else chunks[0],
        num_microbatches=1, seq_length=s, micro_batch_size=1, forward_only=True, collect_non_loss_data=True)
    full = torch.empty(1, s, vocab, device=device)
    if ps.is_pipeline_last_stage(ignore_virtual=True):
        local = collected[0].float().contiguous()  # [1, s, V_padded / tp]
        parts = [torch.empty_like(local) for _ in range(ps.get_tensor_model_parallel_world_size())]
        dist.all_gather(parts, local, group=ps.get_tensor_model_parallel_group())
        full.copy_(torch.cat(parts, dim=-1)[..., :vocab])
    if ps.get_pipeline_model_parallel_world_size() > 1:
        dist.broadcast(full, src=ps.get_pipeline_model_parallel_last_rank(),
                       group=ps.get_pipeline_model_parallel_group())
    return full.cpu()


def run_cases(folder: str, model_cfg, cases: list, max_new_tokens: int, eos: int) -> list:
    """One rank: load the checkpoint at this TP/PP; per case (logits [1, s, V], greedy tokens)."""
    from megatron.core import parallel_state as ps

    from nvlm_train.checkpoint.dist import load_checkpoint
    from nvlm_train.config.parallel import ParallelConfig
    from nvlm_train.model.builder import build_model

    parallel = ParallelConfig(tp=ps.get_tensor_model_parallel_world_size(),
                              pp=ps.get_pipeline_model_parallel_world_size())
    built = build_model(model_cfg, parallel, initialize=False)
    load_checkpoint(Path(folder), built.chunks, weights_only=True)
    chunks = [c.eval() for c in built.chunks]
    vocab, image_token = model_cfg.language.vocab_size, model_cfg.language.image_token_id
    results = []
    with torch.no_grad():
        for _, ids, pixels in cases:
            logits = _forward_logits(chunks, ids, pixels, vocab)
            greedy, cur = [], ids
            for step in range(max_new_tokens):
                step_logits = logits if step == 0 else _forward_logits(chunks, cur, pixels, vocab)
                nxt = int(step_logits[0, -1].argmax())
                greedy.append(nxt)
                if nxt in (eos, image_token):
                    break
                cur = torch.cat([cur, torch.tensor([[nxt]])], dim=1)
            results.append((logits, greedy))
    return results if dist.get_rank() == 0 else []
