"""Our ``ModelConfig`` <-> an HF NVLM-D ``config.json`` (or an InternViT + a Qwen2 ``config.json``).

The trainer refuses a checkpoint whose ``model:`` section differs from its config, so the import side
derives every architecture field from the HF config and takes only the layout knobs (head / vocabulary
padding multiples, freezing, ...) from a base preset; the export side writes exactly the fields our
HF modeling files read (including the projector LayerNorm epsilon, so both sides agree).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from nvlm_train.config.choices import RopeScaling
from nvlm_train.config.model import ModelConfig
from nvlm_train.convert.errors import ConvertError
from nvlm_train.convert.hf_files import ExportSettings, HFLayout, build_hf_config
from nvlm_train.vision.tiling import DEFAULT_MAX_TILES

IMAGE_CONTEXT = "<|vision_pad|>"


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise ConvertError(f"{path} not found")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ConvertError(f"{path} is not valid JSON: {exc}") from exc


def tokenizer_token_ids(tokenizer_dir: Path | None) -> dict[str, int]:
    """Token -> id for the special tokens of an HF tokenizer directory (empty without tokenizer.json)."""
    if tokenizer_dir is None or not (Path(tokenizer_dir) / "tokenizer.json").is_file():
        return {}
    data = json.loads((Path(tokenizer_dir) / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in data.get("added_tokens", [])}
    vocab = data.get("model", {}).get("vocab", {})
    if IMAGE_CONTEXT not in ids and isinstance(vocab, dict) and IMAGE_CONTEXT in vocab:
        ids[IMAGE_CONTEXT] = vocab[IMAGE_CONTEXT]
    return ids


def _need(cfg: dict, key: str, where: str):
    if key not in cfg:
        raise ConvertError(f"{where} has no {key!r}")
    return cfg[key]


def _vision_fields(vc: dict, image_size: int | None, where: str) -> dict:
    checks = {"norm_type": "rms_norm", "qk_normalization": True, "qkv_bias": False, "hidden_act": "gelu"}
    for key, want in checks.items():
        if vc.get(key, want) != want:
            raise ConvertError(f"{where}: {key}={vc[key]!r} is not supported (InternViT-6B layers need {want!r})")
    return dict(
        num_layers=_need(vc, "num_hidden_layers", where),
        hidden_size=_need(vc, "hidden_size", where),
        num_attention_heads=_need(vc, "num_attention_heads", where),
        ffn_hidden_size=_need(vc, "intermediate_size", where),
        image_size=image_size or _need(vc, "image_size", where),
        patch_size=_need(vc, "patch_size", where),
        num_channels=vc.get("num_channels", 3),
        norm_eps=vc.get("layer_norm_eps", 1e-6),
        layerscale_init=vc.get("initializer_factor", 0.1),
    )


def _rope_theta(lc: dict) -> float:
    rope = lc.get("rope_parameters") or {}
    return float(lc.get("rope_theta") or rope.get("rope_theta") or 10000.0)


def _rope_scaling(lc: dict, where: str) -> dict:
    """Our rope-scaling fields from HF ``rope_scaling`` (either ``type`` or ``rope_type`` spelling)."""
    rs = lc.get("rope_scaling")
    if not rs:
        return dict(rope_scaling_type=None, rope_scaling_factor=1.0)
    kind = rs.get("type") or rs.get("rope_type")
    if kind == "default":
        return dict(rope_scaling_type=None, rope_scaling_factor=1.0)
    if kind not in list(RopeScaling):
        raise ConvertError(f"{where}: rope_scaling {rs} is not supported (our RoPE implements dynamic NTK, "
                           f"which changes nothing up to max_position_embeddings, and no scaling)")
    return dict(rope_scaling_type=RopeScaling(kind), rope_scaling_factor=float(rs.get("factor", 1.0)))


def _language_fields(lc: dict, where: str) -> dict:
    # The LLM is chosen by architectures[0], as the released remote code does: the released NVLM-D-72B
    # config.json spells its Qwen2 LLM with model_type "llama".
    arch = (lc.get("architectures") or [None])[0]
    if arch is None and lc.get("model_type", "qwen2") == "qwen2":
        arch = "Qwen2ForCausalLM"
    if arch != "Qwen2ForCausalLM":
        raise ConvertError(f"{where}: architectures[0]={arch!r} is not supported (need Qwen2ForCausalLM; "
                           f"model_type={lc.get('model_type')!r})")
    if lc.get("hidden_act", "silu") != "silu":
        raise ConvertError(f"{where}: hidden_act={lc['hidden_act']!r} is not supported (Qwen2 uses silu)")
    heads = _need(lc, "num_attention_heads", where)
    return dict(
        num_layers=_need(lc, "num_hidden_layers", where),
        hidden_size=_need(lc, "hidden_size", where),
        num_attention_heads=heads,
        num_query_groups=lc.get("num_key_value_heads") or heads,
        ffn_hidden_size=_need(lc, "intermediate_size", where),
        vocab_size=_need(lc, "vocab_size", where),
        rotary_base=_rope_theta(lc),
        norm_eps=lc.get("rms_norm_eps", 1e-6),
        max_position_embeddings=lc.get("max_position_embeddings", 32768),
        **_rope_scaling(lc, where),
    )


def _assemble(base: ModelConfig, vision: dict, projector: dict, language: dict) -> ModelConfig:
    model = copy.deepcopy(base)
    for section, values in (("vision", vision), ("projector", projector), ("language", language)):
        target = getattr(model, section)
        for key, value in values.items():
            setattr(target, key, value)
    model.validate()
    return model


def _image_token_id(cfg_value, tokenizer_dir: Path | None, vocab: int) -> int:
    if cfg_value is not None:
        return int(cfg_value)
    ids = tokenizer_token_ids(tokenizer_dir)
    if IMAGE_CONTEXT in ids:
        return ids[IMAGE_CONTEXT]
    raise ConvertError(
        f"image-context token id unknown: config.json has no img_context_token_id and no tokenizer with "
        f"{IMAGE_CONTEXT} was found (looked in {tokenizer_dir}); pass --image-token-id"
    )


def model_config_from_nvlm(cfg: dict, base: ModelConfig, tokenizer_dir: Path | None,
                           image_token_id: int | None = None) -> ModelConfig:
    """ModelConfig of an NVLM-D ``config.json`` (nvidia/NVLM-D-72B layout)."""
    vc, lc = _need(cfg, "vision_config", "config.json"), _need(cfg, "llm_config", "config.json")
    if cfg.get("ps_version", "v2") != "v2" or cfg.get("select_layer", -1) != -1:
        raise ConvertError("config.json: only ps_version 'v2' and select_layer -1 are supported")
    language = _language_fields(lc, "config.json llm_config")
    language["image_token_id"] = image_token_id if image_token_id is not None else _image_token_id(
        cfg.get("img_context_token_id"), tokenizer_dir, language["vocab_size"])
    projector = dict(
        downsample_ratio=cfg.get("downsample_ratio", 0.5),
        ffn_hidden_size=cfg.get("projector_intermediate_size") or language["ffn_hidden_size"],
        layernorm_eps=cfg.get("projector_layernorm_eps", 1e-5),
    )
    vision = _vision_fields(vc, cfg.get("force_image_size"), "config.json vision_config")
    return _assemble(base, vision, projector, language)


def model_config_from_parts(vision_cfg: dict, llm_cfg: dict, base: ModelConfig, tokenizer_dir: Path | None,
                            image_token_id: int | None = None) -> ModelConfig:
    """ModelConfig of an InternViT ``config.json`` + a Qwen2 ``config.json``; projector from ``base``."""
    language = _language_fields(llm_cfg, "language config.json")
    language["image_token_id"] = image_token_id if image_token_id is not None else _image_token_id(
        None, tokenizer_dir, language["vocab_size"])
    projector = {k: getattr(base.projector, k) for k in ("downsample_ratio", "ffn_hidden_size", "layernorm_eps")}
    vision = _vision_fields(vision_cfg, None, "vision config.json")
    return _assemble(base, vision, projector, language)


def hf_config_for(model: ModelConfig, dtype: str, tokenizer_dir: Path | None, max_tiles: int = DEFAULT_MAX_TILES,
                  layout: HFLayout = HFLayout.RELEASED, prompt: tuple[str, str | None] | None = None,
                  vit_dummy_heads: int | None = None) -> dict:
    """The ``config.json`` dict of an export of ``model`` (special ids from the tokenizer when present).

    ``prompt``: (prompt format, system text or None) the model was trained with; ``vit_dummy_heads``
    overrides the layout's count (an import describing the files it reads).
    """
    ids = tokenizer_token_ids(tokenizer_dir)
    fmt, system = prompt if prompt is not None else (None, None)
    return build_hf_config(model, ExportSettings(
        dtype=dtype, layout=layout, vit_dummy_heads=vit_dummy_heads, max_tiles=max_tiles, prompt_format=fmt,
        system_message=None if fmt is None else (system or ""), bos_token_id=ids.get("<|endoftext|>"),
        eos_token_id=ids.get("<|im_end|>")))


def hf_prompt(cfg: dict) -> tuple[str, str | None]:
    """(prompt format, system text or None) an NVLM-D ``config.json`` serves with (ours or the released)."""
    from types import SimpleNamespace

    from nvlm_train.hf.conversation import format_for_config

    try:
        fmt, system = format_for_config(SimpleNamespace(**{k: cfg.get(k) for k in
                                                            ("prompt_format", "system_message", "template")}))
    except ValueError as exc:
        raise ConvertError(f"config.json: {exc}") from exc
    return fmt.name, system or None


def generation_config_for(hf_config: dict, tokenizer_dir: Path | None) -> dict:
    llm = hf_config["llm_config"]
    ids = tokenizer_token_ids(tokenizer_dir)
    out = {"bos_token_id": llm.get("bos_token_id"), "eos_token_id": llm.get("eos_token_id"), "do_sample": False}
    if "<|endoftext|>" in ids:
        out["pad_token_id"] = ids["<|endoftext|>"]
    return {k: v for k, v in out.items() if v is not None}
