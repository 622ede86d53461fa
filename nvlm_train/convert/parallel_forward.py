"""Our side of ``verify``: the checkpoint at the launched TP/PP through the generation engine.

Per case it records the prompt's logits, the greedy tokens (one ``generate`` call: prefill + KV-cache
decode, the engine every tool uses) and a probe of each block's output during the prefill: the ViT
layers, the projector (``mlp1``) and the LLM layers, under the HF export's module names, at a bounded
set of rows (``probe_rows``) so that memory does not grow with the prompt. Runs on every rank; each
pipeline stage reports the layers it holds.
"""

from __future__ import annotations

from pathlib import Path

import torch

PROBE_ROWS = 512  # rows (tokens, or ViT patches) kept per block; all of them for shorter inputs


def probe_rows(n: int, limit: int = PROBE_ROWS) -> torch.Tensor:
    """Evenly spaced row indices (first and last included); all rows when there are few."""
    if n <= limit:
        return torch.arange(n)
    return torch.linspace(0, n - 1, limit).round().long().unique()


class Probe:
    """Forward hooks that keep each named block's first output of a case (the prefill), at ``probe_rows``."""

    def __init__(self):
        self.records: dict[str, torch.Tensor] = {}
        self.handles = []

    def watch(self, module: torch.nn.Module, name: str, to_rows) -> None:
        def hook(mod, args, output):
            if name not in self.records:
                rows = to_rows(output[0] if isinstance(output, tuple) else output)  # [n, h]
                self.records[name] = rows[probe_rows(rows.shape[0])].detach().float().cpu()
        self.handles.append(module.register_forward_hook(hook))

    def take(self) -> dict[str, torch.Tensor]:
        out, self.records = self.records, {}
        return out


def _ours_rows(x: torch.Tensor) -> torch.Tensor:
    """Megatron [s, b, h] (b = 1 prompt, or ViT tiles) -> HF's row order [b * s, h]."""
    return x.transpose(0, 1).reshape(-1, x.shape[-1])


def watch_ours(chunk, probe: Probe) -> None:
    if chunk.vision_model is not None:
        for layer in chunk.vision_model.decoder.layers:
            probe.watch(layer, f"vision_model.encoder.layers.{layer.layer_number - 1}", _ours_rows)
        probe.watch(chunk.projector, "mlp1", lambda x: x.reshape(-1, x.shape[-1]))
    for layer in chunk.language_model.decoder.layers:
        probe.watch(layer, f"language_model.model.layers.{layer.layer_number - 1}", _ours_rows)


def run_cases(folder: str, tokenizer_dir: str, cases: list, max_new_tokens: int, eos: int) -> list:
    """One rank: per case (prompt logits at probe rows [r, V], greedy tokens, {block: probe [r, h]})."""
    from nvlm_train.inference.decode import DecodeOptions
    from nvlm_train.inference.engine import GenerationEngine

    engine = GenerationEngine.from_checkpoint(Path(folder), tokenizer_dir=tokenizer_dir, bf16=False, batch_size=1)
    probe = Probe()
    watch_ours(engine.runner.chunk, probe)
    results = []
    for _, ids, pixels in cases:
        opts = DecodeOptions(max_new_tokens=[max_new_tokens], stop_ids=frozenset({eos}), prompt_logits=True)
        row = engine.generate_ids([ids[0].tolist()], pixels, opts)[0]
        logits = row.prompt_logits
        results.append((logits[probe_rows(logits.shape[0])], row.tokens, probe.take()))
    return results
