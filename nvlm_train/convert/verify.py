"""Check an HF export against the checkpoint it came from: same logits, same greedy generations.

Our megatron model is loaded from the checkpoint at the TP/PP asked for (distributed checkpoints reshard
on load, so a checkpoint saved at any TP/PP works; TP1/PP1 runs in this process, larger layouts in
spawned ranks through megatron's pipeline schedule) and run next to the HF export, both in fp32,
on four prompts built by the data pipeline: text only, one tile, many tiles, two images. Images are
synthetic and tiled by the pipeline's ``load_image`` (the model card's semantics).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from nvlm_train.checkpoint.saved_run import SavedRun
from nvlm_train.convert.errors import ConvertError


@dataclass
class CaseResult:
    name: str
    tokens: int
    tiles: int
    max_abs_diff: float
    max_abs_logit: float
    ours: list[int]
    hf: list[int]
    image_token_id: int = -1

    @property
    def generations_agree(self) -> bool:
        # Our forward splices image embeddings at every image-context token, so a generated one ends our
        # greedy run (HF's generate would embed it as text): compare up to it.
        if self.ours and self.ours[-1] == self.image_token_id and len(self.ours) < len(self.hf):
            return self.ours == self.hf[: len(self.ours)]
        return self.ours == self.hf


@dataclass
class VerifyReport:
    tolerance: float
    cases: list[CaseResult] = field(default_factory=list)
    tp: int = 1
    pp: int = 1

    @property
    def max_abs_diff(self) -> float:
        return max(c.max_abs_diff for c in self.cases)

    @property
    def ok(self) -> bool:
        return all(c.generations_agree and c.max_abs_diff <= self.tolerance * max(1.0, c.max_abs_logit)
                   for c in self.cases)

    def as_dict(self) -> dict:
        return {"ok": self.ok, "tolerance": self.tolerance, "max_abs_diff": self.max_abs_diff,
                "tp": self.tp, "pp": self.pp,
                "cases": [dict(vars(c), generations_agree=c.generations_agree) for c in self.cases]}

    def text(self) -> str:
        lines = [f"{'case':<12} {'tokens':>6} {'tiles':>5} {'max |dlogit|':>12}  greedy"]
        for c in self.cases:
            lines.append(f"{c.name:<12} {c.tokens:>6} {c.tiles:>5} {c.max_abs_diff:>12.3e}  "
                         f"{'agree' if c.generations_agree else f'DIFFER ours={c.ours} hf={c.hf}'}")
        lines.append(f"our model at TP{self.tp} PP{self.pp}; largest logit difference {self.max_abs_diff:.3e} "
                     f"(tolerance {self.tolerance:g} x max(1, |logit|)): {'OK' if self.ok else 'FAILED'}")
        return "\n".join(lines)


def _image(width: int, height: int, seed: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, width * height * 3).reshape(height, width, 3)
    noise = rng.integers(0, 64, size=(height, width, 3))
    return Image.fromarray(((base + noise) % 256).astype("uint8"))


def build_cases(model_cfg, tokenizer_dir: Path, max_tiles: int, prompt: tuple[str, str | None] = ("nvlm_d", None)
                ) -> list[tuple[str, torch.Tensor, torch.Tensor | None]]:
    """(name, token ids [1, s], pixel values [tiles, 3, H, W] or None) for the four input kinds, in the
    prompt (format, system text) the checkpoint trained with."""
    from nvlm_train.data.prompt import format_chatml
    from nvlm_train.data.tokenizer import TextTokenizer
    from nvlm_train.vision.tiling import load_image

    tok = TextTokenizer(tokenizer_dir)
    size, per_tile = model_cfg.vision.image_size, model_cfg.tokens_per_tile
    one = load_image(_image(size, size, 0), input_size=size, max_num=1)
    many = load_image(_image(3 * size, size, 1), input_size=size, max_num=max_tiles)
    second = load_image(_image(size, 2 * size, 2), input_size=size, max_num=max_tiles)
    specs = [
        ("text", [("user", "Hello, who are you?"), ("assistant", "I am a helpful assistant."),
                  ("user", "Describe a cat.")], []),
        ("one-tile", [("user", "<image>\nPlease describe the image shortly.")], [one]),
        ("many-tiles", [("user", "<image>\nWhat is in this picture?")], [many]),
        ("two-images", [("user", "<image>\n<image>\nHow many objects can you see?")], [one, second]),
    ]
    cases = []
    for name, messages, images in specs:
        text = format_chatml(messages, [im.shape[0] for im in images], per_tile, system=prompt[1],
                             add_generation_prompt=True, fmt=prompt[0])
        ids = torch.tensor([tok.encode(text)], dtype=torch.long)
        pixels = torch.cat(images) if images else None
        cases.append((name, ids, pixels))
    return cases


def _our_logits(chunk, ids: torch.Tensor, pixels: torch.Tensor | None, vocab: int) -> torch.Tensor:
    device = next(chunk.parameters()).device  # CUDA when a GPU is present
    pos = torch.arange(ids.shape[1], device=device).unsqueeze(0)
    pixels = pixels.to(device) if pixels is not None else None
    return chunk(ids.to(device), pos, pixel_values=pixels)[..., :vocab].float().cpu()


def _our_greedy(chunk, ids, pixels, vocab: int, n: int, eos: int, image_token: int) -> list[int]:
    out: list[int] = []
    for _ in range(n):
        nxt = int(_our_logits(chunk, ids, pixels, vocab)[0, -1].argmax())
        out.append(nxt)
        if nxt in (eos, image_token):
            break
        ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return out


def _hf_greedy(model, ids, pixels, n: int, eos: int, pad: int) -> list[int]:
    out = model.generate(pixel_values=pixels, input_ids=ids, attention_mask=torch.ones_like(ids),
                         max_new_tokens=n, do_sample=False, eos_token_id=eos, pad_token_id=pad)
    return [int(t) for t in out[0]]


def _load_ours(folder: Path, model_cfg):
    from nvlm_train.checkpoint.dist import load_checkpoint
    from nvlm_train.checkpoint.layout import CheckpointError
    from nvlm_train.config.parallel import ParallelConfig
    from nvlm_train.model.builder import build_model

    built = build_model(model_cfg, ParallelConfig(), initialize=False)
    try:
        load_checkpoint(folder, built.chunks, weights_only=True)
    except (CheckpointError, RuntimeError, KeyError) as exc:
        raise ConvertError(f"cannot load {folder} into the model of its saved config: {exc}") from exc
    chunk = built.chunks[0].eval()
    return chunk


def _ours_single(folder: Path, model_cfg, cases, max_new_tokens: int, eos: int) -> list:
    """TP1/PP1 in this process: per case (logits, greedy tokens)."""
    from nvlm_train.runtime.session import distributed_session

    image_token, vocab = model_cfg.language.image_token_id, model_cfg.language.vocab_size
    with distributed_session(), torch.no_grad():
        ours = _load_ours(folder, model_cfg)
        return [(_our_logits(ours, ids, pixels, vocab), _our_greedy(ours, ids, pixels, vocab, max_new_tokens, eos,
                                                                   image_token))
                for _, ids, pixels in cases]


def verify(checkpoint: Path, hf_dir: Path, tolerance: float = 1e-4, max_new_tokens: int = 8, tp: int = 1,
           pp: int = 1) -> VerifyReport:
    """Compare; our model runs at ``tp`` x ``pp`` (spawned ranks when more than one)."""
    from transformers import AutoModel

    from nvlm_train.convert.hf_config import read_json
    from nvlm_train.data.tokenizer import TextTokenizer

    run = SavedRun.from_folder(checkpoint)
    folder, model_cfg = run.folder, run.model
    hf_dir = Path(hf_dir)
    hf_cfg = read_json(hf_dir / "config.json")
    model_cfg.freeze.vision = model_cfg.freeze.projector = model_cfg.freeze.language = False
    if model_cfg.language.num_layers % pp:
        raise ConvertError(f"--pp {pp} does not divide the LLM's {model_cfg.language.num_layers} layers")
    cases = build_cases(model_cfg, hf_dir, int(hf_cfg.get("max_dynamic_patch", 6)), run.prompt)
    tok = TextTokenizer(hf_dir)
    if tp * pp == 1:
        ours = _ours_single(folder, model_cfg, cases, max_new_tokens, tok.im_end_id)
    else:
        from nvlm_train.config.parallel import ParallelConfig
        from nvlm_train.convert.parallel_forward import run_cases
        from nvlm_train.runtime.spawn import run_on_layout

        ours = run_on_layout(run_cases, ParallelConfig(tp=tp, pp=pp), str(folder), model_cfg, cases, max_new_tokens,
                             tok.im_end_id, brief_errors=(ConvertError,))[0]
    hf = AutoModel.from_pretrained(str(hf_dir), torch_dtype=torch.float32, trust_remote_code=True,
                                   use_flash_attn=False).eval()
    report = VerifyReport(tolerance, tp=tp, pp=pp)
    with torch.no_grad():
        for (name, ids, pixels), (a, greedy) in zip(cases, ours):
            b = hf(pixel_values=pixels, input_ids=ids).logits.float()
            if a.shape != b.shape:
                raise ConvertError(f"{name}: logits shapes differ: ours {list(a.shape)}, HF {list(b.shape)}")
            report.cases.append(CaseResult(
                name, ids.shape[1], 0 if pixels is None else pixels.shape[0], float((a - b).abs().max()),
                float(b.abs().max()), greedy, _hf_greedy(hf, ids, pixels, max_new_tokens, tok.im_end_id, tok.pad_id),
                model_cfg.language.image_token_id))
    return report
