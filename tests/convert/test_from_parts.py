"""The paper's starting point: an InternViT HF directory + a Qwen2 HF directory, projector fresh."""

from __future__ import annotations

import json
import shutil

import torch
from safetensors.torch import save_file

from nvlm_train.convert.export import ExportOptions, export_checkpoint
from tests.convert.helpers import cli, load_export


def _split_source(hf_source, root):
    """InternViT dir (own key names, no prefix) and a Qwen2 dir with tied embeddings (no lm_head)."""
    cfg = json.loads((hf_source / "config.json").read_text())
    state = load_export(hf_source)
    vision, language = root / "InternViT-tiny", root / "Qwen2-tiny"
    vision.mkdir()
    language.mkdir()
    width = cfg["vision_config"]["hidden_size"]

    def original(key, t):  # InternViT-6B-448px-V1-5 has no dummy heads: qkv [3C, C], norms [C], proj [C, C]
        if key.endswith("attn.qkv.weight"):
            return torch.cat([b[:width] for b in t.chunk(3)])
        if key.endswith(("attn.q_norm.weight", "attn.k_norm.weight")):
            return t[:width].clone()
        return t[:, :width].contiguous() if key.endswith("attn.proj.weight") else t

    vit = {k[len("vision_model."):]: original(k, v) for k, v in state.items() if k.startswith("vision_model.")}
    assert tuple(vit["encoder.layers.0.attn.qkv.weight"].shape) == (3 * width, width)
    save_file(vit, str(vision / "model.safetensors"), metadata={"format": "pt"})
    (vision / "config.json").write_text(json.dumps(cfg["vision_config"]))
    lm = {k[len("language_model."):]: v for k, v in state.items() if k.startswith("language_model.")}
    del lm["lm_head.weight"]
    save_file(lm, str(language / "model.safetensors"), metadata={"format": "pt"})
    (language / "config.json").write_text(json.dumps(dict(cfg["llm_config"], tie_word_embeddings=True)))
    for name in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy2(hf_source / name, language / name)
    return vision, language, state


def test_vision_plus_language_dirs(hf_source, tmp_path):
    """The original 25-head-style InternViT (no dummy heads) + Qwen2 import, and export in the released
    layout: the dummy heads come back as zeros, every other tensor is the source's."""
    vision, language, source = _split_source(hf_source, tmp_path)
    ckpt = tmp_path / "ckpt"
    cli("hf-to-mcore", "--vision", str(vision), "--language", str(language), "--out", str(ckpt),
        "--model-config", "nvlm_d_tiny", "--no-progress")
    export_checkpoint(ExportOptions(ckpt, tmp_path / "hf", progress=False))
    out = load_export(tmp_path / "hf")
    assert set(out) == set(source)
    for key, tensor in source.items():
        if key.startswith("mlp1."):
            assert out[key].shape == tensor.shape and not torch.equal(out[key], tensor), key  # fresh
        elif key == "language_model.lm_head.weight":
            assert torch.equal(out[key], source["language_model.model.embed_tokens.weight"])  # tied
        else:
            assert torch.equal(out[key], tensor), key
    assert torch.equal(out["mlp1.0.weight"], torch.ones_like(out["mlp1.0.weight"]))  # LayerNorm init
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["projector_intermediate_size"] == 128 and cfg["img_context_token_id"] == 3
