"""``nvlm-convert``: HF <-> megatron-core checkpoint conversion and verification.

Thin argparse layer over ``importer``, ``export`` and ``verify``; a ConvertError (or a checkpoint /
config error) prints its message and exits with status 1, a failed verification with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _size(text: str) -> int:
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    text = text.strip().upper().rstrip("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nvlm-convert", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    h2m = sub.add_parser("hf-to-mcore", help="HF NVLM-D (or InternViT + Qwen2) -> megatron-core checkpoint (streaming)")
    h2m.add_argument("--hf", type=Path, help="an NVLM-D HF directory (nvidia/NVLM-D-72B layout)")
    h2m.add_argument("--vision", type=Path, help="an InternViT HF directory (with --language; fresh projector)")
    h2m.add_argument("--language", type=Path, help="a Qwen2 HF directory (with --vision)")
    h2m.add_argument("--out", type=Path, required=True,
                     help="output checkpoints/ folder (use it as checkpoint.init_from)")
    h2m.add_argument("--tp", type=int, default=1,
                     help="tensor parallel size you will train at: checked now (the checkpoint reshards on load)")
    h2m.add_argument("--pp", type=int, default=1,
                     help="pipeline parallel size you will train at: checked now (the checkpoint reshards on load)")
    h2m.add_argument("--dtype", choices=("bf16", "fp32", "fp16"), help="default: the HF weights' dtype")
    h2m.add_argument("--model-config", help="configs/model preset (e.g. nvlm_d_72b) to match: padding multiples, "
                                            "projector size for --vision/--language; architecture must agree")
    h2m.add_argument("--vision-head-multiple", type=int, default=8,
                     help="pad ViT heads to a multiple of this (without --model-config; default 8)")
    h2m.add_argument("--vocab-multiple", type=int, default=1024,
                     help="pad the vocabulary to a multiple of this (without --model-config; default 1024)")
    h2m.add_argument("--image-token-id", type=int, help="default: config.json or the tokenizer's <|vision_pad|>")
    h2m.add_argument("--force", action="store_true", help="replace an existing --out")
    h2m.add_argument("--no-progress", action="store_true")

    m2h = sub.add_parser("mcore-to-hf", help="training checkpoint -> HF NVLM-D directory (streaming)")
    m2h.add_argument("--checkpoint", type=Path, required=True, help="a run's checkpoints/ folder or an iter_* folder")
    m2h.add_argument("--out", type=Path, required=True, help="output HF directory")
    m2h.add_argument("--tokenizer", type=Path, help="tokenizer directory (default: the checkpoint config's)")
    m2h.add_argument("--dtype", choices=("bf16", "fp32", "fp16"), help="default: the checkpoint's dtype")
    m2h.add_argument("--max-shard-size", type=_size, default=5 * 1024**3, help="e.g. 5G, 500M (default 5G)")
    m2h.add_argument("--layout", choices=("released", "internvl"), default="released",
                     help="released (default): the released NVLM-D-72B files' layout, 7 zero dummy ViT heads, "
                          "loadable by its remote code and vLLM; internvl: the plain 25-head InternViT layout")
    m2h.add_argument("--force", action="store_true", help="replace an existing --out")
    m2h.add_argument("--no-progress", action="store_true")

    ver = sub.add_parser("verify", help="our megatron model vs an HF export on the same inputs")
    ver.add_argument("--checkpoint", type=Path, required=True)
    ver.add_argument("--hf", type=Path, required=True)
    ver.add_argument("--tolerance", type=float, default=1e-4,
                     help="max |logit difference| allowed, relative to max(1, max |logit|) (default 1e-4)")
    ver.add_argument("--max-new-tokens", type=int, default=8)
    ver.add_argument("--tp", type=int, default=1, help="run our model at this tensor parallel size (default 1)")
    ver.add_argument("--pp", type=int, default=1, help="run our model at this pipeline parallel size (default 1)")
    ver.add_argument("--json", action="store_true", help="print the report as one JSON object")
    return p


def _run(args: argparse.Namespace) -> int:
    if args.command == "hf-to-mcore":
        from nvlm_train.convert.importer import ImportOptions, import_hf

        out = import_hf(ImportOptions(
            out=args.out, hf=args.hf, vision=args.vision, language=args.language, tp=args.tp, pp=args.pp,
            dtype=args.dtype, force=args.force, model_config=args.model_config,
            vision_head_multiple=args.vision_head_multiple, vocab_multiple=args.vocab_multiple,
            image_token_id=args.image_token_id, progress=not args.no_progress))
        print(f"wrote {out} (start a stage with checkpoint.init_from={out})")
        return 0
    if args.command == "mcore-to-hf":
        from nvlm_train.convert.export import ExportOptions, export_checkpoint

        r = export_checkpoint(ExportOptions(
            checkpoint=args.checkpoint, out=args.out, tokenizer=args.tokenizer, dtype=args.dtype, force=args.force,
            max_shard_bytes=args.max_shard_size, progress=not args.no_progress, layout=args.layout))
        print(f"wrote {r.out}: {r.num_tensors} tensors in {r.num_shards} shards, "
              f"{r.bytes_written / 1e9:.3f} GB in {r.seconds:.1f} s (from {r.iteration_dir})")
        for note in r.notes:
            print(f"note: {note}", file=sys.stderr)
        return 0
    from nvlm_train.convert.verify import verify

    report = verify(args.checkpoint, args.hf, args.tolerance, args.max_new_tokens, args.tp, args.pp)
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        print(report.text())
    return 0 if report.ok else 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from nvlm_train.checkpoint.layout import CheckpointError
    from nvlm_train.config.errors import ConfigError
    from nvlm_train.convert.errors import ConvertError
    from nvlm_train.runtime.spawn import SpawnError

    known = (ConvertError, CheckpointError, ConfigError, SpawnError)
    try:
        return _run(args)
    except known as exc:
        print(f"nvlm-convert {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
