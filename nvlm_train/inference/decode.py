"""The generation loop: prefill, then one token per step, with megatron's static KV cache or without.

With the cache (``StaticInferenceContext`` through ``GPTModel``'s attention layers), the prompt runs
once, the ViT runs once per image, and every step feeds one new token per row. Without it, every step
re-runs the whole sequence (the reference the cache is tested against, and the bench's baseline).
Both use the same left-padded layout (``batch.left_padded``), so they must give the same tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from megatron.core.inference.contexts import StaticInferenceContext

from nvlm_train.inference.batch import attention_mask, left_padded
from nvlm_train.inference.runner import StageRunner
from nvlm_train.inference.sampling import choose_tokens


@dataclass
class DecodeOptions:
    max_new_tokens: list[int]  # per row (a row near the context's end gets fewer)
    stop_ids: frozenset[int] = frozenset()
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    generators: list[torch.Generator] = field(default_factory=list)  # one per row when sampling
    # (row, generated ids so far) -> True when a stop string has appeared
    stop_check: Callable[[int, list[int]], bool] | None = None
    use_cache: bool = True
    prompt_logits: bool = False  # also return each row's full-vocabulary logits over its prompt


@dataclass
class RowOutput:
    tokens: list[int]  # generated ids; a stop id that ended the row is the last one
    finish_reason: str  # "stop" | "length"
    prompt_logits: torch.Tensor | None = None  # [prompt tokens, V] float, CPU


def generate_tokens(runner: StageRunner, prompts: list[list[int]], pixel_values: torch.Tensor | None,
                    opts: DecodeOptions, pad_id: int, image_token_id: int) -> list[RowOutput]:
    """Collective over the pipeline: every rank passes the same prompts; every rank gets the outputs.

    ``pixel_values`` [tiles, 3, H, W]: all rows' tiles in row order (the first stage's ViT input).
    """
    b = len(prompts)
    budget = max(opts.max_new_tokens)
    layout = left_padded(prompts, budget, pad_id, image_token_id)
    L, pads = layout.prompt_len, layout.pads
    ctx = StaticInferenceContext(b, layout.total) if opts.use_cache else None
    logits = runner.forward(layout.tokens[:, :L], layout.positions[:, :L], layout.positions[:, :L],
                            attention_mask(pads, 0, L), pixel_values, layout.image_mask, ctx,
                            last_token_only=not opts.prompt_logits)  # [b, L or 1, V] on the last stage
    outputs = [RowOutput([], "length") for _ in range(b)]
    if opts.prompt_logits:
        full = runner.broadcast_from_last(logits, (b, L, runner.real_vocab), torch.float32).cpu()
        for row, out in enumerate(outputs):
            out.prompt_logits = full[row, int(pads[row]):]
    active = [n > 0 for n in opts.max_new_tokens]
    for step in range(budget):
        if not any(active):
            break
        nxt = None
        if runner.last:
            nxt = choose_tokens(logits[:, -1], opts.temperature, opts.top_k, opts.top_p, opts.generators)
        nxt = runner.broadcast_from_last(nxt, (b,), torch.long).cpu()
        cur = L + step
        layout.tokens[:, cur] = nxt
        for row in range(b):
            if not active[row]:
                continue
            out, tok = outputs[row], int(nxt[row])
            out.tokens.append(tok)
            if tok in opts.stop_ids or (opts.stop_check is not None and opts.stop_check(row, out.tokens)):
                out.finish_reason, active[row] = "stop", False
            elif len(out.tokens) >= opts.max_new_tokens[row]:
                active[row] = False
        if not any(active) or step == budget - 1:
            break
        if ctx is not None:
            ctx.sequence_len_offset = cur
            ctx.enable_decode_mode()
            logits = runner.forward(layout.tokens[:, cur:cur + 1], layout.positions[:, cur:cur + 1],
                                    layout.positions[:, :cur + 1], attention_mask(pads, cur, cur + 1), None,
                                    torch.zeros(b, 1, dtype=torch.bool), ctx)  # a generated image token is text
        else:
            image_mask = torch.nn.functional.pad(layout.image_mask, (0, cur + 1 - L))
            logits = runner.forward(layout.tokens[:, :cur + 1], layout.positions[:, :cur + 1],
                                    layout.positions[:, :cur + 1], attention_mask(pads, 0, cur + 1),
                                    pixel_values, image_mask, None)
    return outputs
