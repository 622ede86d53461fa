"""Generation throughput: the engine (batched, megatron's static KV cache) against the loop it replaced.

The old loop (``inference/generate.py`` before the engine, re-created here as the baseline) took one
prompt at a time and re-ran the whole sequence, ViT included, for every new token. The engine runs
the same prompts in left-padded batches, the prompt and the ViT once, then one token per row and step.
Both generate exactly ``--new-tokens`` tokens per prompt (no stop tokens) greedily, so the token
counts match and the tokens themselves must agree (checked). Prompts mix text-only, one-tile and
multi-tile questions. Prints one JSON line: tokens/s of each and ``engine_over_old_loop``.

The model is ``--model`` (a configs/model preset, random weights, TP1) or ``--checkpoint``. Runs on
CUDA when present (bf16), else the CPU (fp32). ``--smoke``: tiny model, few prompts (what CI runs).
Usage: ``python bench/generate_throughput.py [--smoke] [--prompts 16] [--new-tokens 32] [--batch-size 8]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nvlm_train.inference.decode import DecodeOptions  # noqa: E402
from nvlm_train.inference.engine import GenerationEngine, GenerationRequest  # noqa: E402
from nvlm_train.model.loss import mask_padded_vocab  # noqa: E402
from nvlm_train.runtime.session import distributed_session  # noqa: E402


@torch.no_grad()
def old_loop(model, prompt: list[int], pixel_values: torch.Tensor, max_new_tokens: int, real_vocab: int) -> list[int]:
    """The pre-engine greedy loop: no KV cache, the whole sequence (and the ViT) again for each token.

    One change: image embeddings go only to the prompt's image-context slots (``image_mask``), so a
    random model that generates that token does not stop the loop (the engine treats it as text too).
    """
    device = next(model.parameters()).device
    tokens, out = list(prompt), []
    pv = pixel_values.to(device)
    for _ in range(max_new_tokens):
        ids = torch.tensor([tokens], device=device)
        pos = torch.arange(len(tokens), device=device)[None]
        image_mask = torch.zeros_like(ids, dtype=torch.bool)
        image_mask[0, :len(prompt)] = True
        logits = model(ids, pos, pixel_values=pv, image_mask=image_mask)  # [1, s, V_padded]
        nxt = int(mask_padded_vocab(logits[0, -1].float(), real_vocab).argmax())
        out.append(nxt)
        tokens.append(nxt)
    return out


def _image(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8))


def requests(n: int, size: int) -> list[GenerationRequest]:
    kinds = [
        lambda i: GenerationRequest(f"t{i}", [("user", "Hello, who are you? " * (1 + i % 3))]),
        lambda i: GenerationRequest(f"o{i}", [("user", "<image>\nWhat is in this picture?")], [_image(size, size, i)]),
        lambda i: GenerationRequest(f"m{i}", [("user", "<image>\nDescribe the scene in detail.")],
                                    [_image(3 * size, size, i)]),
    ]
    return [kinds[i % 3](i) for i in range(n)]


def random_checkpoint(preset: str, out: Path) -> Path:
    """A randomly initialised checkpoint of ``preset`` with the demo tokenizer (inside a session)."""
    import yaml

    from nvlm_train.checkpoint import dist as ckpt
    from nvlm_train.config.choices import to_plain
    from nvlm_train.config.parallel import ParallelConfig
    from nvlm_train.config.store import load_model_config
    from nvlm_train.data.tokenizer import build_demo_tokenizer
    from nvlm_train.model.builder import build_model

    model = load_model_config(preset)
    built = build_model(model, ParallelConfig())
    config_yaml = yaml.safe_dump({"model": to_plain(model), "data": {"tokenizer_dir": str(build_demo_tokenizer())}})
    ckpt.save_checkpoint(out, built.chunks, None, None, {}, ckpt.TrainingState(iteration=1), config_yaml, keep_last=1)
    del built
    return out


def measure(engine: GenerationEngine, reqs: list[GenerationRequest], new_tokens: int) -> dict:
    encoded = [engine.encode(r) for r in reqs]
    vocab = engine.model_cfg.language.vocab_size
    t0 = time.perf_counter()
    old = [old_loop(engine.runner.chunk, p, px, new_tokens, vocab) for p, px in encoded]
    old_s = time.perf_counter() - t0
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))  # as the engine batches
    new: dict[int, list[int]] = {}
    t0 = time.perf_counter()
    for start in range(0, len(order), engine.batch_size):
        rows = order[start:start + engine.batch_size]
        opts = DecodeOptions(max_new_tokens=[new_tokens] * len(rows))
        outs = engine.generate_ids([encoded[i][0] for i in rows], torch.cat([encoded[i][1] for i in rows]), opts)
        new.update({i: o.tokens for i, o in zip(rows, outs)})
    new_s = time.perf_counter() - t0
    total = new_tokens * len(reqs)
    return {"prompts": len(reqs), "new_tokens_per_prompt": new_tokens, "batch_size": engine.batch_size,
            "prompt_tokens_mean": float(np.mean([len(p) for p, _ in encoded])),
            "tiles_total": int(sum(len(px) for _, px in encoded)),
            "old_loop_tokens_per_s": total / old_s, "engine_tokens_per_s": total / new_s,
            "engine_over_old_loop": old_s / new_s, "same_tokens": all(old[i] == new[i] for i in range(len(reqs)))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python bench/generate_throughput.py", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a trained checkpoint (default: random weights of --model)")
    p.add_argument("--model", default="nvlm_d_tiny", help="configs/model preset for random weights")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--smoke", action="store_true", help="tiny model, 4 prompts, 4 tokens (CI)")
    args = p.parse_args(argv)
    if args.smoke:
        args.model, args.prompts, args.new_tokens, args.batch_size = "nvlm_d_tiny", 4, 4, 4
    with tempfile.TemporaryDirectory() as tmp, distributed_session(seed=0) as on_cpu:
        path = args.checkpoint or random_checkpoint(args.model, Path(tmp) / "ckpt")
        engine = GenerationEngine.from_checkpoint(path, batch_size=args.batch_size)
        result = measure(engine, requests(args.prompts, engine.model_cfg.vision.image_size), args.new_tokens)
        result.update(device="cpu" if on_cpu else torch.cuda.get_device_name(), model=args.checkpoint or args.model,
                      dtype=str(next(engine.runner.chunk.parameters()).dtype))
    print(json.dumps(result))
    return 0 if result["same_tokens"] else 1


if __name__ == "__main__":
    sys.exit(main())
