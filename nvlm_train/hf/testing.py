"""Tiny NVLM-D builders for tests (random weights, CPU): tokenizer, spec, export directory.

Reusable by the exporter / conversion tests::

    from nvlm_train.hf.testing import build_tiny_export
    export_dir = build_tiny_export(tmp_path / "hf", seed=0)   # config + shards + modeling files + tokenizer
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .export_files import (
    LLMSpec,
    NVLMDSpec,
    VisionSpec,
    build_hf_config,
    copy_modeling_files,
    save_sharded_safetensors,
    write_hf_config,
)

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_pad|>")
_QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
_CORPUS = [
    "Hello, who are you? I am a tiny assistant.",
    "Please describe the image shortly. The image shows a red square.",
    "<Image><tile_1><tile_2><tile_global_thumbnail></Image>",
    "user assistant system image tile global thumbnail",
    "The quick brown fox jumps over the lazy dog. 0123456789",
]


def build_tiny_tokenizer(out_dir, vocab_size: int = 400) -> Path:
    """Byte-level BPE with Qwen2's pre-tokenizer and the special tokens ``SPECIAL_TOKENS`` (ids 0..3).

    Writes tokenizer.json, vocab.json, merges.txt and tokenizer_config.json (``Qwen2Tokenizer``), so it
    loads with ``AutoTokenizer.from_pretrained(dir, use_fast=False)`` too.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tok.save(str(out / "tokenizer.json"))
    model = json.loads(tok.to_str())["model"]
    vocab = {k: v for k, v in model["vocab"].items() if k not in SPECIAL_TOKENS}
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    added = {
        str(tok.token_to_id(t)): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t in SPECIAL_TOKENS
    }
    tok_config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<|vision_pad|>"],
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "errors": "replace",
        "model_max_length": 32768,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))
    return out


def tiny_spec(vocab_size: int = 448, vision_heads: int = 5, image_size: int = 56) -> NVLMDSpec:
    """Tiny NVLM-D: ViT 2 layers x 40 wide (5 heads x 8), 56 px tiles of 14 px patches (4x4 grid ->
    2x2 = 4 image tokens per tile), projector 160 -> 48 -> 32, Qwen2 2 layers x 32 wide (4 heads, 2 KV)."""
    return NVLMDSpec(
        vision=VisionSpec(
            num_layers=2, hidden_size=8 * vision_heads, num_heads=vision_heads, ffn_hidden_size=64,
            image_size=image_size, patch_size=14,
        ),
        llm=LLMSpec(
            num_layers=2, hidden_size=32, ffn_hidden_size=64, num_heads=4, num_kv_heads=2,
            vocab_size=vocab_size, max_position_embeddings=4096, bos_token_id=None, eos_token_id=2,
        ),
        projector_ffn_hidden_size=48,
        max_tiles=6,
        img_context_token_id=3,
        dtype="float32",
    )


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Overwrite every parameter with seeded random values (norm weights / layer scales around 1 and 0.5)
    so that tests exercise every weight, including norms, biases and layer scales; dummy ViT heads
    (the released layout) are left zero."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32) * std
        if "norm" in name.split(".")[-2] or name.endswith(("ls1", "ls2")) or name.startswith("mlp1.0.weight"):
            noise = noise + (0.5 if name.endswith(("ls1", "ls2")) else 1.0)
        p.copy_(noise.to(p.dtype))
    for module in model.modules():  # the released layout's dummy ViT heads stay zero
        if hasattr(module, "zero_dummy_heads_"):
            module.zero_dummy_heads_()
    return model


def build_tiny_model(spec: NVLMDSpec | None = None, seed: int = 0):
    """An ``NVLM_D_Model`` (from the in-library modeling files) with random fp32 weights."""
    from .configuration_nvlm_d import NVLM_D_Config
    from .modeling_nvlm_d import NVLM_D_Model

    spec = spec or tiny_spec()
    cfg_dict = build_hf_config(spec)
    cfg = NVLM_D_Config(**{k: v for k, v in cfg_dict.items() if k not in ("auto_map", "architectures")})
    torch.manual_seed(seed)
    model = NVLM_D_Model(cfg).float().eval()
    return randomize_(model, seed)


TOKENIZER_FILES = (
    "tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json",
)


def tokenizer_vocab_info(tokenizer_dir) -> tuple[int, int]:
    """(number of token ids, id of ``<|vision_pad|>``) of an HF tokenizer directory's tokenizer.json."""
    data = json.loads((Path(tokenizer_dir) / "tokenizer.json").read_text())
    ids = dict(data["model"]["vocab"])
    ids.update({t["content"]: t["id"] for t in data.get("added_tokens", [])})
    return max(ids.values()) + 1, ids["<|vision_pad|>"]


def build_tiny_export(
    out_dir,
    spec: NVLMDSpec | None = None,
    seed: int = 0,
    max_shard_bytes: int = 64 * 1024,
    tokenizer_dir=None,
) -> Path:
    """A complete tiny HF NVLM-D export directory: config.json, sharded safetensors + index, modeling
    files and a tokenizer (copied from ``tokenizer_dir``, else the tiny one of ``build_tiny_tokenizer``).

    Without ``spec``, ``tiny_spec`` sized to the tokenizer (vocab rounded up to 64, image-context id
    from the tokenizer). Returns the directory.
    """
    import shutil

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir is None:
        build_tiny_tokenizer(out)
    else:
        for name in TOKENIZER_FILES:
            if (Path(tokenizer_dir) / name).is_file():
                shutil.copy2(Path(tokenizer_dir) / name, out / name)
    if spec is None:
        n_ids, pad_id = tokenizer_vocab_info(out)
        spec = tiny_spec(vocab_size=-(-n_ids // 64) * 64)
        spec.img_context_token_id = pad_id
    model = build_tiny_model(spec, seed)
    write_hf_config(out, build_hf_config(spec))
    copy_modeling_files(out)
    save_sharded_safetensors(model.state_dict(), out, max_shard_bytes=max_shard_bytes)
    return out


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def card_load_image(image, input_size: int = 448, max_num: int = 12) -> torch.Tensor:
    """Model-card semantics of ``load_image`` for a PIL image (dynamic tiling + thumbnail, bicubic resize
    of each tile to ``input_size``, ImageNet normalisation). Test helper; the data pipeline owns the
    real one."""
    import numpy as np
    from PIL import Image

    image = image.convert("RGB")
    width, height = image.size
    aspect = width / height
    ratios = sorted(
        {(i, j) for i in range(1, max_num + 1) for j in range(1, max_num + 1) if i * j <= max_num},
        key=lambda r: r[0] * r[1],
    )
    best, best_diff = (1, 1), float("inf")
    for r in ratios:
        diff = abs(aspect - r[0] / r[1])
        if diff < best_diff:
            best, best_diff = r, diff
        elif diff == best_diff and width * height > 0.5 * input_size * input_size * r[0] * r[1]:
            best = r
    cols, rows = best
    resized = image.resize((input_size * cols, input_size * rows))
    tiles = [
        resized.crop((c * input_size, r * input_size, (c + 1) * input_size, (r + 1) * input_size))
        for r in range(rows)
        for c in range(cols)
    ]
    if len(tiles) > 1:
        tiles.append(image.resize((input_size, input_size)))
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    out = []
    for tile in tiles:
        tile = tile.resize((input_size, input_size), Image.BICUBIC)
        arr = torch.from_numpy(np.asarray(tile, dtype=np.float32) / 255.0).permute(2, 0, 1)
        out.append((arr - mean) / std)
    return torch.stack(out)
