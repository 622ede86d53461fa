"""mcore -> HF: stream a training checkpoint into an HF NVLM-D directory.

Planned entirely from metadata first (every key, shape and dtype checked against the HF model's own
parameter shapes), then executed rule by rule: one layer's tensor is read from the checkpoint,
stripped of padding, split by the rule's transform, cast and appended to the current safetensors shard.
Peak memory is about one layer's largest tensor, independent of the model size.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from nvlm_train.checkpoint.reader import DistCheckpointReader
from nvlm_train.checkpoint.saved_run import SavedRun
from nvlm_train.config.model import ModelConfig
from nvlm_train.convert.errors import ConvertError
from nvlm_train.convert.hf_config import generation_config_for, hf_config_for
from nvlm_train.convert.hf_files import HFLayout, copy_modeling_files, write_chat_template, write_hf_config
from nvlm_train.convert.mapping import RULES, Rule, expand, padding_sizes
from nvlm_train.convert.outdir import check_output, staged_output
from nvlm_train.convert.safetensors_writer import ShardedSafetensorsWriter, TensorPlan
from nvlm_train.convert.transforms import TRANSFORMS, Dims
from nvlm_train.data.prompt import DEFAULT_PROMPT_FORMAT

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float32: "float32", torch.float16: "float16"}
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.jinja")
MODEL_PREFIXES = ("vision_model.", "projector.", "language_model.")


@dataclass
class ExportOptions:
    checkpoint: Path
    out: Path
    tokenizer: Path | None = None
    dtype: str | None = None  # None: keep the checkpoint's
    force: bool = False
    max_shard_bytes: int = 5 * 1024**3
    progress: bool = True
    check_hf_shapes: bool = True
    layout: HFLayout = HFLayout.RELEASED


@dataclass
class ExportReport:
    out: Path
    iteration_dir: Path
    num_tensors: int
    num_shards: int
    bytes_written: int
    seconds: float
    notes: list[str] = field(default_factory=list)  # what a user serving the export should know


def dims_of(model: ModelConfig, vit_dummy_heads: int = 0) -> Dims:
    v, lm = model.vision, model.language
    return Dims(v.num_attention_heads, v.head_dim, lm.num_attention_heads, lm.num_query_groups, lm.head_dim,
                vit_dummy_heads)


def stored_key(rule: Rule) -> tuple[str, int | None]:
    """Our global parameter name -> (checkpoint key, layer): megatron stacks a tower's layers."""
    parts = rule.mcore.split(".")
    if "layers" in parts and parts[parts.index("layers") + 1].isdigit():
        at = parts.index("layers") + 1
        return ".".join(parts[:at] + parts[at + 1:]), int(parts[at])
    return rule.mcore, None


def _apply(rule: Rule, tensor: torch.Tensor, sizes: dict[str, int], dims: Dims) -> list[torch.Tensor]:
    if rule.narrow is not None:
        dim, name = rule.narrow
        if tensor.shape[dim] < sizes[name]:
            raise ConvertError(f"checkpoint tensor {rule.mcore} has {tensor.shape[dim]} entries along dim {dim}, "
                               f"fewer than the model's {sizes[name]} ({name})")
        tensor = tensor.narrow(dim, 0, sizes[name])
    return TRANSFORMS[rule.op].split(tensor, dims)


def _check_model_keys(reader: DistCheckpointReader, rules: list[Rule], model: ModelConfig) -> None:
    needed = {stored_key(r)[0] for r in rules}
    stored = {k for k in reader.tensors if k.startswith(MODEL_PREFIXES)}
    missing, unexpected = sorted(needed - stored), sorted(stored - needed)
    problems = []
    if missing:
        problems.append("missing keys: " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected keys: " + ", ".join(unexpected))
    for rule in rules:
        key, layer = stored_key(rule)
        if layer is not None and key in stored:
            want = model.vision.num_layers if key.startswith("vision_model.") else model.language.num_layers
            if reader.shape(key)[0] != want:
                problems.append(f"mis-shaped key {key}: {reader.shape(key)[0]} layers, config has {want}")
    if problems:
        raise ConvertError(f"checkpoint {reader.folder} does not match its saved model config:\n  "
                           + "\n  ".join(dict.fromkeys(problems)))


def plan_export(reader: DistCheckpointReader, model: ModelConfig, dtype: torch.dtype | None,
                layout: HFLayout = HFLayout.RELEASED) -> tuple[list[Rule], list[TensorPlan], torch.dtype]:
    """Rules in write order and the HF tensors they produce (computed on the meta device)."""
    rules = expand(RULES, model)
    _check_model_keys(reader, rules, model)
    sizes, dims = padding_sizes(model), dims_of(model, layout.vit_dummy_heads)
    out_dtype = dtype or reader.dtype(stored_key(rules[0])[0])
    plans = []
    for rule in rules:
        key, layer = stored_key(rule)
        shape = reader.shape(key)[1:] if layer is not None else reader.shape(key)
        try:
            parts = _apply(rule, torch.empty(shape, device="meta"), sizes, dims)
        except RuntimeError as exc:
            raise ConvertError(f"mis-shaped key {key}: stored {list(reader.shape(key))} cannot be "
                               f"converted to {', '.join(rule.hf)} ({exc})") from exc
        plans.extend(TensorPlan(k, tuple(p.shape), out_dtype) for k, p in zip(rule.hf, parts))
    return rules, plans, out_dtype


def check_against_hf(plans: list[TensorPlan], hf_config: dict) -> None:
    """Every planned key/shape equals what our HF model class declares for this config.json."""
    from nvlm_train.convert.hf_files import hf_param_shapes

    expected = hf_param_shapes(hf_config)
    got = {p.key: p.shape for p in plans}
    problems = [f"missing {k}" for k in sorted(set(expected) - set(got))]
    problems += [f"unexpected {k}" for k in sorted(set(got) - set(expected))]
    problems += [f"mis-shaped {k}: {list(got[k])} vs HF {list(expected[k])}"
                 for k in sorted(set(got) & set(expected)) if tuple(got[k]) != tuple(expected[k])]
    if problems:
        raise ConvertError("the converted weights do not fit the HF model:\n  " + "\n  ".join(problems))


def _tokenizer_dir(opts: ExportOptions, run: SavedRun) -> Path:
    tok = opts.tokenizer or run.tokenizer_dir
    if tok is None:
        from nvlm_train.data.tokenizer import build_demo_tokenizer

        return build_demo_tokenizer()  # the trainer's default when data.tokenizer_dir is null
    if not (Path(tok) / "tokenizer.json").is_file() and not (Path(tok) / "vocab.json").is_file():
        raise ConvertError(f"tokenizer directory {tok} has neither tokenizer.json nor vocab.json; pass --tokenizer")
    return Path(tok)


def export_checkpoint(opts: ExportOptions) -> ExportReport:
    start = time.perf_counter()
    run = SavedRun.from_folder(opts.checkpoint)
    folder, model, prompt = run.folder, run.model, run.prompt
    check_output(opts.out, opts.force)
    if opts.dtype is not None and opts.dtype not in DTYPES:
        raise ConvertError(f"--dtype {opts.dtype}: use one of {', '.join(DTYPES)}")
    with DistCheckpointReader(folder) as reader:
        tokenizer = _tokenizer_dir(opts, run)
        layout = HFLayout(opts.layout)
        rules, plans, dtype = plan_export(reader, model, DTYPES.get(opts.dtype or ""), layout)
        hf_config = hf_config_for(model, DTYPE_NAMES[dtype], tokenizer, run.max_tiles, layout, prompt)
        if opts.check_hf_shapes:
            check_against_hf(plans, hf_config)
        sizes, dims = padding_sizes(model), dims_of(model, layout.vit_dummy_heads)
        with staged_output(opts.out, opts.force) as tmp:
            writer = ShardedSafetensorsWriter(tmp, plans, opts.max_shard_bytes)
            total = sum(p.nbytes for p in plans)
            with tqdm(total=total, unit="B", unit_scale=True, desc="mcore-to-hf", file=sys.stderr,
                      disable=not opts.progress) as bar:
                try:
                    for rule in rules:
                        key, layer = stored_key(rule)
                        parts = _apply(rule, reader.read(key, layer), sizes, dims)
                        for name, tensor in zip(rule.hf, parts):
                            writer.write(name, tensor.to(dtype))
                            bar.update(tensor.numel() * dtype.itemsize)
                        del parts
                    writer.close()
                finally:
                    writer.abort()
            write_hf_config(tmp, hf_config)
            (tmp / "generation_config.json").write_text(
                json.dumps(generation_config_for(hf_config, tokenizer), indent=2) + "\n")
            copy_modeling_files(tmp)
            for name in TOKENIZER_FILES:
                if (tokenizer / name).is_file():
                    shutil.copy2(tokenizer / name, tmp / name)
            write_chat_template(tmp, *prompt)
    notes = []
    if prompt[0] != DEFAULT_PROMPT_FORMAT:
        notes.append(f"this model was trained with prompt format {prompt[0]!r}: our modeling files and the "
                     f"exported chat_template use it, but the released NVLM-D remote code always sends "
                     f"{DEFAULT_PROMPT_FORMAT!r}'s prompt")
    return ExportReport(Path(opts.out), folder, len(plans), len(writer.names), writer.bytes_written,
                        time.perf_counter() - start, notes)
