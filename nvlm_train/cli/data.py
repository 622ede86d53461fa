"""``nvlm-data``: synthetic demo data, shard building, pipeline stats and sample inspection."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from nvlm_train.config.model import ModelConfig
from nvlm_train.vision.tiling import DEFAULT_MAX_TILES

_MODEL = ModelConfig()  # NVLM-D-72B's sizes: the defaults of --image-size and --tokens-per-tile

def _add_pipeline_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", default=None, help="HF tokenizer directory (default: the demo tokenizer)")
    p.add_argument("--seq-length", type=int, default=4096)
    p.add_argument("--max-tiles", type=int, default=DEFAULT_MAX_TILES)
    p.add_argument("--image-size", type=int, default=_MODEL.vision.image_size, help="default: NVLM-D's")
    p.add_argument("--tokens-per-tile", type=int, default=_MODEL.tokens_per_tile, help="default: NVLM-D's")
    p.add_argument("--kind", default="auto", choices=["auto", "conversation", "caption", "text"])


def _config(args: argparse.Namespace):
    from nvlm_train.data.loader import DataConfig

    return DataConfig(recipe="<paths>", tokenizer_dir=args.tokenizer, seq_length=args.seq_length,
                      max_tiles=args.max_tiles, image_size=args.image_size, tokens_per_tile=args.tokens_per_tile)


def cmd_synth(args: argparse.Namespace) -> int:
    from nvlm_train.data.synth import write_synthetic_shards

    total = args.train + args.heldout + (args.captions if args.captions is not None else max(1, args.train // 10))
    with tqdm(total=total, desc="synth", unit="sample", disable=args.quiet) as bar:
        out = write_synthetic_shards(args.out, args.train, args.heldout, seed=args.seed, n_captions=args.captions,
                                     samples_per_shard=args.samples_per_shard, progress=bar.update)
    for split, paths in out.items():
        print(f"{split}: {len(paths)} shard(s) in {Path(args.out) / split}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from nvlm_train.data.shards import expand_paths
    from nvlm_train.data.stats import shard_stats

    cfg = _config(args)
    shards = expand_paths(args.shards)
    with tqdm(desc="stats", unit="sample", disable=args.json or args.quiet, file=sys.stderr) as bar:
        stats = shard_stats(shards, cfg, bar.update, kind=args.kind)
    d = stats.as_dict()
    if args.json:
        print(json.dumps(d))
    else:
        for k in ("samples", "tiles", "tokens", "target_tokens"):
            print(f"{k:>14}: {d[k]}")
        print(f"{'skipped':>14}: {sum(d['skipped'].values())}")
        for reason, n in d["skipped"].items():
            print(f"{'':>16}{reason}: {n}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from nvlm_train.data.errors import SampleError
    from nvlm_train.data.inspect_sample import save_contact_sheet, token_view
    from nvlm_train.data.loader import DataConfig, MultimodalLoader, Skip, is_read_member
    from nvlm_train.data.recipe import recipe_from_paths
    from nvlm_train.data.samples import parse_sample

    cfg = _config(args)
    cfg = DataConfig(**{**cfg.__dict__, "single_pass": True, "packing": False})
    try:
        loader = MultimodalLoader(cfg, recipe=recipe_from_paths([args.shard], kind=args.kind))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    proc = loader.processor
    n = proc.length or 0
    j = args.index
    if args.key is not None:
        matches = [i for i in range(n) if proc.locate(i)[1].keys[proc.locate(i)[2]] == args.key]
        if not matches:
            print(f"error: key {args.key!r} not in {args.shard}", file=sys.stderr)
            return 1
        j = matches[0]
    if not 0 <= j < n:
        print(f"error: index {j} out of range (shard has {n} samples)", file=sys.stderr)
        return 1
    d, shard, k = proc.locate(j)
    members = shard.members[k]
    print(f"shard: {shard.path}\nkey:   {shard.keys[k]}\nmembers: " +
          ", ".join(f"{e} ({s} B)" for e, (_, s) in sorted(members.items())))
    res = proc(j)
    if isinstance(res, Skip):
        print(f"SKIPPED: {res.reason} {res.message}")
        return 0
    try:
        raw = proc.reader.read(shard.path, {e: v for e, v in members.items() if is_read_member(e)})
        conv = parse_sample(raw, proc.sources[d].spec.sample_options)
        if conv.system:
            print(f"system: {conv.system}")
        for role, text in conv.messages:
            print(f"{role}: {text}")
    except SampleError:
        pass
    print(f"tiles per image: {list(res.tiles_per_image)}; tokens: {len(res)}; "
          f"assistant tokens: {int(res.targets.sum())}")
    print("--- token view ([[...]] = assistant tokens with loss) ---")
    print(token_view(res, proc.tokenizer))
    out = Path(args.out) if args.out else Path(f"inspect_{shard.keys[k].replace('/', '_')}.png")
    path = save_contact_sheet(res.pixel_values, out)
    print(f"contact sheet: {path}" if path else "no images")
    return 0


def cmd_build_shards(args: argparse.Namespace) -> int:
    from nvlm_train.data.build_shards import caption_samples, llava_samples, write_shards

    if bool(args.llava_json) == bool(args.captions):
        print("error: give exactly one of --llava-json (with --image-root) or --captions", file=sys.stderr)
        return 2
    samples = (llava_samples(args.llava_json, args.image_root or Path(args.llava_json).parent)
               if args.llava_json else caption_samples(args.captions))
    with tqdm(desc="build-shards", unit="sample", disable=args.quiet) as bar:
        try:
            paths = write_shards(samples, args.out, args.prefix, args.max_count, int(args.max_size_mb * 2**20),
                                 progress=bar.update)
        except (OSError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    print(f"wrote and verified {len(paths)} shard(s) in {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nvlm-data", description=__doc__)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write the synthetic demo dataset (train/, captions/, heldout/ shards)")
    s.add_argument("out", help="output directory (use it as DATA_ROOT for the demo recipe)")
    s.add_argument("--train", type=int, default=5000)
    s.add_argument("--heldout", type=int, default=500)
    s.add_argument("--captions", type=int, default=None, help="caption samples (default: train / 10)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--samples-per-shard", type=int, default=1000)
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("stats", help="run the pipeline over shards; report samples, tiles, tokens, skipped")
    s.add_argument("shards", nargs="+", help="shard paths or patterns")
    _add_pipeline_args(s)
    s.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    s.set_defaults(func=cmd_stats)

    s = sub.add_parser("inspect", help="print a decoded sample and its token view; save its tiles as a PNG")
    s.add_argument("shard")
    s.add_argument("--index", type=int, default=0)
    s.add_argument("--key", default=None)
    s.add_argument("--out", default=None, help="contact sheet path (default inspect_<key>.png)")
    _add_pipeline_args(s)
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("build-shards", help="LLaVA JSON + images, or caption pairs -> verified webdataset shards")
    s.add_argument("--llava-json", default=None)
    s.add_argument("--image-root", default=None, help="folder the LLaVA 'image' paths are relative to")
    s.add_argument("--captions", default=None, help="folder of name.jpg + name.txt pairs")
    s.add_argument("--out", required=True)
    s.add_argument("--prefix", default="shard")
    s.add_argument("--max-count", type=int, default=10000)
    s.add_argument("--max-size-mb", type=float, default=1024)
    s.set_defaults(func=cmd_build_shards)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
