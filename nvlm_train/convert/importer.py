"""HF -> mcore: an NVLM-D directory (or InternViT + Qwen2 directories) -> a checkpoint nvlm-train starts from.

Everything is checked before anything is written: the model config is derived from the HF config(s),
every HF key and shape is compared with what that config implies, and the TP/PP the user will train
at is checked against the padding. One process then builds our model on the meta device (no memory)
and saves a ``checkpoints/`` folder with ``iter_0000000`` and the run config, which
``checkpoint.init_from`` accepts. The save streams: each parameter is made from the HF tensors it
needs (read from the safetensors files, merged by the mapping table's transform, padded by the
model's own layout) only when the writer reaches it, so the peak is about one layer, not the model.
The checkpoint is written at TP1/PP1; distributed checkpoints reshard on load, so it serves any
TP/PP whose padded shapes agree (vision heads / vocabulary padded to fixed multiples, checked by
``check_layout``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch.distributed.checkpoint.api import CheckpointException

from nvlm_train.config.choices import to_plain
from nvlm_train.config.model import ModelConfig, architecture_diffs
from nvlm_train.config.parallel import ParallelConfig
from nvlm_train.convert.errors import ConvertError
from nvlm_train.convert.export import DTYPES, dims_of
from nvlm_train.convert.hf_config import (
    hf_config_for,
    hf_prompt,
    model_config_from_nvlm,
    model_config_from_parts,
    read_json,
)
from nvlm_train.convert.hf_source import HFWeights, check_keys
from nvlm_train.convert.mapping import RULES, expand
from nvlm_train.convert.outdir import check_output, staged_output
from nvlm_train.convert.transforms import TRANSFORMS, DummyHeadError
from nvlm_train.data.prompt import DEFAULT_PROMPT_FORMAT, get_prompt_format
from nvlm_train.runtime.spawn import run_on_layout


@dataclass
class ImportOptions:
    out: Path
    hf: Path | None = None
    vision: Path | None = None
    language: Path | None = None
    tp: int = 1  # the layout training will load it at: checked here, the checkpoint itself is TP1/PP1
    pp: int = 1
    dtype: str | None = None  # None: keep the HF weights' dtype
    force: bool = False
    model_config: str | None = None  # a configs/model preset to take layout knobs from (and check against)
    vision_head_multiple: int = 8
    vocab_multiple: int = 1024
    image_token_id: int | None = None
    progress: bool = True


@dataclass
class ImportPlan:
    model: ModelConfig
    folders: dict[str, Path]
    tie_lm_head: bool
    fresh_projector: bool
    dtype: torch.dtype
    tokenizer_dir: Path | None
    vit_dummy_heads: int = 0  # zero ViT heads the HF files store after the real ones (released: 7)
    prompt: tuple[str, str | None] = ("nvlm_d", "Answer the questions.")  # (format, system) to train with


def _base(opts: ImportOptions) -> ModelConfig:
    if opts.model_config:
        from nvlm_train.config.store import load_model_config

        return load_model_config(opts.model_config)
    base = ModelConfig()
    base.vision.pad_heads_to_multiple_of = opts.vision_head_multiple
    base.language.vocab_pad_multiple = opts.vocab_multiple
    return base


def _tokenizer_in(*folders: Path | None) -> Path | None:
    for f in folders:
        if f is not None and (Path(f) / "tokenizer.json").is_file():
            return Path(f).absolute()
    return None


def plan_import(opts: ImportOptions) -> tuple[ImportPlan, HFWeights]:
    """Derive the model config and check every HF key/shape against it (no output written yet)."""
    if (opts.hf is None) == (opts.vision is None and opts.language is None):
        raise ConvertError("give either --hf DIR or both --vision DIR and --language DIR")
    base = _base(opts)
    if opts.hf is not None:
        hf = Path(opts.hf)
        tok = _tokenizer_in(hf)
        hf_cfg = read_json(hf / "config.json")
        model = model_config_from_nvlm(hf_cfg, base, tok, opts.image_token_id)
        folders, fresh = {"": hf}, False
        tie = bool(hf_cfg["llm_config"].get("tie_word_embeddings"))
        prompt = hf_prompt(hf_cfg)
    else:
        if opts.vision is None or opts.language is None:
            raise ConvertError("--vision and --language must be given together")
        vision, language = Path(opts.vision), Path(opts.language)
        tok = _tokenizer_in(language, vision)
        llm_cfg = read_json(language / "config.json")
        model = model_config_from_parts(read_json(vision / "config.json"), llm_cfg, base, tok, opts.image_token_id)
        folders = {"vision_model.": vision, "language_model.": language}
        tie, fresh = bool(llm_cfg.get("tie_word_embeddings")), True
        fmt = get_prompt_format(DEFAULT_PROMPT_FORMAT)
        prompt = (fmt.name, fmt.system_message)
    if opts.model_config:
        diffs = architecture_diffs(model, base, ("HF", opts.model_config))
        if diffs:
            raise ConvertError(f"the HF model differs from --model-config {opts.model_config}:\n  "
                               + "\n  ".join(diffs))
    weights = HFWeights(folders, tie_lm_head=tie)
    from nvlm_train.convert.hf_files import hf_param_shapes

    dummy = vit_dummy_heads(weights, model)
    expected = hf_param_shapes(hf_config_for(model, "float32", tok, vit_dummy_heads=dummy))
    if fresh:
        expected = {k: v for k, v in expected.items() if not k.startswith("mlp1.")}
    check_keys(weights, expected, " + ".join(str(f) for f in folders.values()))
    if opts.dtype is not None and opts.dtype not in DTYPES:
        raise ConvertError(f"--dtype {opts.dtype}: use one of {', '.join(DTYPES)}")
    dtype = DTYPES[opts.dtype] if opts.dtype else weights.dtype()
    return ImportPlan(model, folders, tie, fresh, dtype, tok, dummy, prompt), weights


def vit_dummy_heads(weights: HFWeights, model: ModelConfig) -> int:
    """How many zero heads the HF ViT stores after its real ones, from the first layer's qkv shape
    (the released NVLM-D-72B: 7; InternViT-6B-448px-V1-5: 0). Whether they are zero is checked as each
    layer is converted."""
    key = "vision_model.encoder.layers.0.attn.qkv.weight"
    if key not in weights.keys():  # noqa: SIM118 (HFWeights is not a dict)
        return 0  # check_keys names the missing key
    v = model.vision
    rows = weights.shape(key)[0]
    if rows % (3 * v.head_dim) or rows < 3 * v.hidden_size:
        raise ConvertError(f"{key} has {rows} rows: not 3 x (heads + dummy heads) x head_dim for "
                           f"{v.num_attention_heads} heads of {v.head_dim} (hidden {v.hidden_size})")
    return rows // (3 * v.head_dim) - v.num_attention_heads


def _config_yaml(plan: ImportPlan, opts: ImportOptions) -> str:
    sources = {k or "hf": str(Path(v).absolute()) for k, v in plan.folders.items()}
    fmt, system = plan.prompt
    cfg = {
        "model": to_plain(plan.model),
        "data": {"tokenizer_dir": str(plan.tokenizer_dir) if plan.tokenizer_dir else None,
                 "prompt_format": fmt, "system_prompt": system},
        "converted_from": {"sources": sources, "fresh_projector": plan.fresh_projector,
                           "checked_for": {"tp": opts.tp, "pp": opts.pp}},
    }
    return yaml.safe_dump(cfg, sort_keys=False)


def _producer(plan: ImportPlan, chunk, weights: HFWeights, padded_vocab: int, padded_heads: int, progress):
    """``produce(param)`` for the streaming save: one parameter's values, made from the HF tensors."""
    from nvlm_train.model.layout import full_shape, global_name, param_layout

    rules = {r.mcore: r for r in expand(RULES, plan.model)}
    dims = dims_of(plan.model, plan.vit_dummy_heads)
    names = {id(p): global_name(local, chunk) for local, p in chunk.named_parameters()}
    unmapped = [n for n in names.values() if n not in rules and not n.startswith("projector.")]
    if unmapped or (not plan.fresh_projector and any(n not in rules for n in names.values())):
        raise ConvertError(f"internal: no mapping rule for our parameters {unmapped or sorted(names.values())}")

    def produce(param: torch.Tensor) -> torch.Tensor:
        name = names.get(id(param))
        if name is None:
            raise ConvertError(f"internal: the checkpoint holds a tensor {list(param.shape)} that is not a parameter")
        if plan.fresh_projector and name.startswith("projector."):  # made and initialised for real already
            progress(1)
            return param.detach()
        if not param.is_meta:
            raise ConvertError(f"internal: {name} was built outside the meta device and would be saved uninitialised")
        rule = rules[name]
        try:
            full = TRANSFORMS[rule.op].merge([weights.get(k) for k in rule.hf], dims)
        except DummyHeadError as exc:
            raise ConvertError(f"{', '.join(rule.hf)}: {exc}; refusing to drop weights that are in use") from exc
        layout = param_layout(name, param, plan.model, 1, padded_vocab, padded_heads)
        want = full_shape(layout, param.shape, 1)
        if tuple(full.shape) != tuple(want):
            raise ConvertError(f"{', '.join(rule.hf)} -> {name}: got {list(full.shape)}, need {list(want)}")
        progress(1)
        return layout.shard(full, 0, 1).to(param.dtype).contiguous()

    return produce, len(names)


def stream_and_save(plan: ImportPlan, out_root: str, config_yaml: str, progress: bool) -> int:
    """Build our model on the meta device and save it, making each tensor from HF as it is written.

    Runs at TP1/PP1 in one process; returns the number of parameters written.
    """
    from tqdm import tqdm

    from nvlm_train.checkpoint.dist import TrainingState, save_checkpoint
    from nvlm_train.checkpoint.streaming_save import StreamingTorchDistSave
    from nvlm_train.model.builder import build_model
    from nvlm_train.model.init import initialize_parameters
    from nvlm_train.model.transformer_config import Precision

    precision = Precision(params_dtype=plan.dtype, bf16=plan.dtype == torch.bfloat16)
    built = build_model(plan.model, ParallelConfig(), precision, initialize=False, meta=True)
    (chunk,) = built.chunks
    if plan.fresh_projector:  # small: made for real, initialised as training would
        chunk.projector.to_empty(device="cpu")
        initialize_parameters(chunk.projector, plan.model, built.padded_vocab, built.padded_vision_heads)
    weights = HFWeights(plan.folders, tie_lm_head=plan.tie_lm_head)
    with tqdm(desc="hf-to-mcore", unit="tensor", file=sys.stderr, disable=not progress) as bar:
        produce, count = _producer(plan, chunk, weights, built.padded_vocab, built.padded_vision_heads, bar.update)
        bar.total = count
        try:
            with torch.no_grad():
                save_checkpoint(Path(out_root), built.chunks, None, None, {}, TrainingState(iteration=0),
                                config_yaml, keep_last=1, sharded_strategy=StreamingTorchDistSave(produce))
        except CheckpointException as exc:  # DCP wraps what ``produce`` raised: surface our message
            for failure in exc.failures.values():
                cause = failure[0] if isinstance(failure, tuple) else failure
                if isinstance(cause, ConvertError):
                    raise cause from exc
            raise
    return count


def check_layout(model: ModelConfig, tp: int, pp: int) -> None:
    """The checkpoint is written at TP1/PP1 and resharded on load: check that TP ``tp`` x PP ``pp`` can load it."""
    from nvlm_train.model.transformer_config import padded_vision_heads, padded_vocab_size

    ParallelConfig(tp=tp, pp=pp).validate(tp * pp, model.language.num_layers)
    lang = model.language
    problems = [f"{what} ({n}) is not divisible by --tp {tp}"
                for what, n in (("the LLM's attention heads", lang.num_attention_heads),
                                ("the LLM's query groups", lang.num_query_groups),
                                ("the LLM's FFN width", lang.ffn_hidden_size),
                                ("the ViT's FFN width", model.vision.ffn_hidden_size),
                                ("the projector's FFN width", model.projector.ffn_hidden_size)) if n % tp]
    if padded_vision_heads(model, tp) != padded_vision_heads(model, 1):
        problems.append(f"ViT heads pad to {padded_vision_heads(model, tp)} at TP{tp} but to "
                        f"{padded_vision_heads(model, 1)} at TP1: raise --vision-head-multiple to a multiple of {tp}")
    if padded_vocab_size(lang.vocab_size, tp, lang.vocab_pad_multiple) != padded_vocab_size(
            lang.vocab_size, 1, lang.vocab_pad_multiple):
        problems.append(f"the vocabulary pads differently at TP{tp}: use a --vocab-multiple divisible by {tp}")
    if problems:
        raise ConvertError("the checkpoint could not be loaded at the requested layout:\n  " + "\n  ".join(problems))


def import_hf(opts: ImportOptions) -> Path:
    """Check, then write ``opts.out`` (a checkpoints/ folder) atomically. Returns its path."""
    check_output(opts.out, opts.force)
    if opts.tp < 1 or opts.pp < 1:
        raise ConvertError("--tp and --pp must be >= 1")
    plan, _ = plan_import(opts)
    config_yaml = _config_yaml(plan, opts)
    check_layout(plan.model, opts.tp, opts.pp)
    with staged_output(opts.out, opts.force) as tmp:
        run_on_layout(stream_and_save, ParallelConfig(), plan, str(tmp), config_yaml, opts.progress)
    return Path(opts.out)
