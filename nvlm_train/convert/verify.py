"""Check an HF export against the checkpoint it came from, layer by layer: same logits, same greedy tokens.

Our side: the checkpoint at the TP/PP asked for (dist checkpoints reshard on load; TP1/PP1 in this
process, larger layouts on spawned ranks), run by the generation engine in fp32 (``parallel_forward``).
HF side: the export's own modeling code with its weights streamed from the safetensors one block at a
time (``hf_streaming``), never the whole model. Four prompts built by the data pipeline (text only, one
tile, many tiles, two images; synthetic images tiled by the model card's ``load_image``). Per prompt:
the output of every ViT layer, the projector and every LLM layer is compared at up to ``PROBE_ROWS``
rows, then the logits; the first block past the tolerance is named. Greedy agreement is checked by
teacher forcing: one HF forward over the prompt plus our greedy tokens must predict each of them.

Peak host memory of the comparison, beyond our model's share on this host (all of it at TP1 on a CPU;
on GPUs it lives on the devices), for NVLM-D-72B: one HF block in fp32 (5.0 GB for the embedding or
``lm_head``, 3.8 GB per LLM layer), one prompt's HF activations and logits (about 1.2 GB of fp32 logits
at 1,900 tokens), and our probes for the four prompts (per prompt 512 rows of logits, 311 MB, and of
each of 125 blocks, 163 MB): about 10 GB in all, against 316 GB to load the export in fp32. Measured on
a 40-layer, 280 MB test model: +13 MB during the HF pass (tests/convert/test_verify_scale.py).
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
    mean_abs_diff: float = 0.0
    first_diverging: str | None = None  # the first block (HF module name) past the tolerance
    first_diverging_diff: float = 0.0  # its max |difference| relative to max(1, max |HF output|)
    blocks_compared: int = 0

    @property
    def generations_agree(self) -> bool:
        # A generated image-context token ends the comparison: the HF forward would splice an image at it.
        if self.ours and self.ours[-1] == self.image_token_id and len(self.ours) < len(self.hf):
            return self.ours == self.hf[: len(self.ours)]
        return self.ours == self.hf


@dataclass
class VerifyReport:
    tolerance: float
    cases: list[CaseResult] = field(default_factory=list)
    tp: int = 1
    pp: int = 1
    hf_peak_block_bytes: int = 0

    @property
    def max_abs_diff(self) -> float:
        return max(c.max_abs_diff for c in self.cases)

    @property
    def first_divergence(self) -> str | None:
        for c in self.cases:
            if c.first_diverging:
                return f"{c.name}: {c.first_diverging} (relative max |diff| {c.first_diverging_diff:.3e})"
        return None

    @property
    def ok(self) -> bool:
        return all(c.generations_agree and c.first_diverging is None
                   and c.max_abs_diff <= self.tolerance * max(1.0, c.max_abs_logit) for c in self.cases)

    def as_dict(self) -> dict:
        return {"ok": self.ok, "tolerance": self.tolerance, "max_abs_diff": self.max_abs_diff,
                "tp": self.tp, "pp": self.pp, "first_divergence": self.first_divergence,
                "hf_peak_block_bytes": self.hf_peak_block_bytes,
                "cases": [dict(vars(c), generations_agree=c.generations_agree) for c in self.cases]}

    def text(self) -> str:
        lines = [f"{'case':<12} {'tokens':>6} {'tiles':>5} {'max |dlogit|':>12} {'mean |dlogit|':>13} {'blocks':>6}"
                 f"  greedy"]
        for c in self.cases:
            lines.append(f"{c.name:<12} {c.tokens:>6} {c.tiles:>5} {c.max_abs_diff:>12.3e} {c.mean_abs_diff:>13.3e} "
                         f"{c.blocks_compared:>6}  "
                         f"{'agree' if c.generations_agree else f'DIFFER ours={c.ours} hf={c.hf}'}")
        if self.first_divergence:
            lines.append(f"first diverging block: {self.first_divergence}")
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


def _hf_probe(streamed, probe) -> None:
    model = streamed.model
    flat = lambda x: x.reshape(-1, x.shape[-1])  # noqa: E731 - [b, s, h] / [n, tokens, h] -> rows
    for i, layer in enumerate(model.vision_model.encoder.layers):
        probe.watch(layer, f"vision_model.encoder.layers.{i}", flat)
    probe.watch(model.mlp1, "mlp1", flat)
    prompt_rows = lambda x: flat(x)[:probe.prompt_len]  # noqa: E731 - teacher forcing appends our tokens
    for i, layer in enumerate(model.language_model.model.layers):
        probe.watch(layer, f"language_model.model.layers.{i}", prompt_rows)


def _first_diverging(ours: dict, theirs: dict, tolerance: float) -> tuple[str | None, float, int]:
    """In execution order, the first block whose outputs differ past ``tolerance`` x max(1, |HF|)."""
    def order(name: str):
        part = 0 if name.startswith("vision_model") else 1 if name == "mlp1" else 2
        return part, int(name.rsplit(".", 1)[1]) if ".layers." in name else 0

    compared = 0
    for name in sorted(ours, key=order):
        if name not in theirs:
            raise ConvertError(f"the export has no block {name} (the checkpoint's model has it)")
        a, b = ours[name], theirs[name]
        if a.shape != b.shape:
            raise ConvertError(f"{name}: output shapes differ: ours {list(a.shape)}, HF {list(b.shape)}")
        compared += 1
        rel = float((a - b).abs().max()) / max(1.0, float(b.abs().max()))
        if not rel <= tolerance:  # NaN counts as diverging
            return name, rel, compared
    return None, 0.0, compared


def _compare_case(streamed, probe, name, ids, pixels, ours_logits, ours_greedy, ours_blocks, tolerance,
                  image_token_id) -> CaseResult:
    from nvlm_train.convert.parallel_forward import probe_rows

    greedy = list(ours_greedy)
    if image_token_id in greedy:  # the HF forward would splice an image at a generated image-context token
        greedy = greedy[:greedy.index(image_token_id) + 1]
    forced = torch.cat([ids, torch.tensor([greedy[:-1]], dtype=torch.long)], dim=1) if greedy else ids
    probe.prompt_len = ids.shape[1]
    with torch.no_grad():
        logits = streamed.model(pixel_values=pixels, input_ids=forced).logits[0].float()  # [s + n - 1, V]
    theirs_blocks = probe.take()
    s = ids.shape[1]
    b = logits[:s][probe_rows(s)]
    if ours_logits.shape != b.shape:
        raise ConvertError(f"{name}: logits shapes differ: ours {list(ours_logits.shape)}, HF {list(b.shape)}")
    predicted = logits[s - 1:s - 1 + len(greedy)].argmax(-1).tolist()
    agree = next((i for i, (x, y) in enumerate(zip(greedy, predicted)) if x != y), None)
    hf_tokens = predicted if agree is None else predicted[:agree + 1]  # HF's greedy up to its first other choice
    diverging, rel, compared = _first_diverging(ours_blocks, theirs_blocks, tolerance)
    diff = (ours_logits - b).abs()
    return CaseResult(name, s, 0 if pixels is None else pixels.shape[0], float(diff.max()), float(b.abs().max()),
                      greedy, hf_tokens, image_token_id, float(diff.mean()), diverging, rel, compared)


def verify(checkpoint: Path, hf_dir: Path, tolerance: float = 1e-4, max_new_tokens: int = 8, tp: int = 1,
           pp: int = 1) -> VerifyReport:
    """Compare; our model runs at ``tp`` x ``pp`` (spawned ranks when more than one)."""
    from nvlm_train.config.parallel import ParallelConfig
    from nvlm_train.convert.hf_config import read_json
    from nvlm_train.convert.hf_streaming import StreamedHF
    from nvlm_train.convert.parallel_forward import Probe, run_cases
    from nvlm_train.data.tokenizer import TextTokenizer
    from nvlm_train.runtime.spawn import run_on_layout

    run = SavedRun.from_folder(checkpoint)
    folder, model_cfg = run.folder, run.model
    hf_dir = Path(hf_dir)
    hf_cfg = read_json(hf_dir / "config.json")
    if model_cfg.language.num_layers % pp:
        raise ConvertError(f"--pp {pp} does not divide the LLM's {model_cfg.language.num_layers} layers")
    cases = build_cases(model_cfg, hf_dir, int(hf_cfg.get("max_dynamic_patch", 6)), run.prompt)
    tok = TextTokenizer(hf_dir)
    per_rank = run_on_layout(run_cases, ParallelConfig(tp=tp, pp=pp), str(folder), str(hf_dir), cases,
                             max_new_tokens, tok.im_end_id, brief_errors=(ConvertError,))
    ours = [list(r) for r in per_rank[0]]
    for rank_results in per_rank[1:]:  # later pipeline stages hold the later layers
        for merged, (_, _, blocks) in zip(ours, rank_results):
            merged[2] = {**blocks, **merged[2]}
    del per_rank
    streamed = StreamedHF(hf_dir)
    streamed.model.img_context_token_id = model_cfg.language.image_token_id
    probe = Probe()
    _hf_probe(streamed, probe)
    report = VerifyReport(tolerance, tp=tp, pp=pp)
    for (name, ids, pixels), (logits, greedy, blocks) in zip(cases, ours):
        report.cases.append(_compare_case(streamed, probe, name, ids, pixels, logits, greedy, blocks, tolerance,
                                          model_cfg.language.image_token_id))
    report.hf_peak_block_bytes = streamed.peak_block_bytes
    return report
