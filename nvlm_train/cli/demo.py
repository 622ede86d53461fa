"""``make demo``: train a tiny NVLM-D from scratch, check it learned, export it, ask it through HF.

Steps (each reuses what an earlier run already built):

1. synthetic demo shards (train + held-out) and the demo tokenizer;
2. training with torchrun on 2 processes with tensor parallelism (TP2; on a GPU machine one
   process per GPU, up to 2), live progress and periodic checkpoints;
3. held-out exact-match accuracy of the megatron checkpoint (chance: 25% for shapes, 20% for colours;
   the target is 90%: below it the demo exits with status 3);
4. export to HF with ``nvlm-convert mcore-to-hf`` and the same accuracy through ``model.chat``
   loaded the model card's way (``AutoModel`` + ``trust_remote_code``);
5. a loss-curve PNG; the last line printed is one JSON object with the results and paths.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from nvlm_train.config.store import config_dir
from nvlm_train.data.prompt import DEFAULT_PROMPT_FORMAT

MIN_ACCURACY = 0.90
MAX_DISAGREEMENT = 0.02


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _run(cmd: list[str], stream: bool = False, env: dict | None = None) -> str:
    """Run a step; stream its output live (training) or capture it; fail loudly."""
    full_env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **(env or {})}
    if stream:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env)
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if not ("Warning" in line or "warnings.warn" in line or line.startswith(("W1", "  warnings"))):
                print("    " + line, end="", flush=True)
        if proc.wait() != 0:
            raise SystemExit(f"[demo] step failed ({proc.returncode}): {' '.join(cmd)}\n{''.join(lines[-40:])}")
        return "".join(lines)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env)
    if proc.returncode != 0:
        raise SystemExit(f"[demo] step failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-4000:]}")
    return proc.stdout


def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def _saved_max_tiles(checkpoint: Path) -> int:
    """The tile budget the run trained with (the HF evaluation must tile the same way)."""
    from nvlm_train.checkpoint.saved_run import SavedRun

    return SavedRun.from_folder(checkpoint).max_tiles


def set_aside_stale_run(run_dir: Path, spec: dict) -> None:
    """Reuse ``run_dir`` only if it was trained with these settings; else move it aside, never delete it.

    A run from another demo version (or other --iters/--train-samples) would otherwise be resumed
    with a different data blend and batch, which the trainer rightly refuses.
    """
    spec_file = run_dir / "demo_spec.json"
    if run_dir.exists() and (not spec_file.is_file() or json.loads(spec_file.read_text()) != spec):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        names = (run_dir.with_name(f"{run_dir.name}.stale-{stamp}-{i}") for i in range(1000))
        stale = next(p for p in names if not p.exists())
        run_dir.rename(stale)
        _say(f"    {run_dir} was trained with other demo settings; moved it to {stale} and starting afresh")
    run_dir.mkdir(parents=True, exist_ok=True)
    spec_file.write_text(json.dumps(spec, sort_keys=True) + "\n")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m nvlm_train.cli.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default=os.environ.get("NVLM_DEMO_DIR", str(Path("runs") / "demo")),
                   help="where the run, the export and the plot go (default: runs/demo)")
    p.add_argument("--iters", type=int, default=1600, help="training iterations")
    p.add_argument("--train-samples", type=int, default=8000, help="synthetic training samples")
    p.add_argument("--heldout-samples", type=int, default=200, help="held-out questions")
    p.add_argument("--fast", action="store_true",
                   help="a quick smoke version (tests): few iterations and samples, no accuracy threshold")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.fast:
        args.iters, args.train_samples, args.heldout_samples = 12, 120, 16
    start = time.time()
    work = Path(args.workdir).resolve()
    run_dir, hf_dir, cache = work / "run", work / "hf", work / "data"
    seed = 1234

    # 1. data and tokenizer --------------------------------------------------------------------------
    from nvlm_train.data.synth import demo_data_root, write_synthetic_shards
    from nvlm_train.data.tokenizer import build_demo_tokenizer

    data_root = demo_data_root(cache, args.train_samples, args.heldout_samples, seed)
    if not (data_root / ".complete").is_file():
        _say(f"1/5 writing synthetic shards to {data_root}")
        write_synthetic_shards(data_root, args.train_samples, args.heldout_samples, seed=seed)
        (data_root / ".complete").write_text("ok\n")
    else:
        _say(f"1/5 reusing synthetic shards in {data_root}")
    tokenizer = build_demo_tokenizer()
    _say(f"    demo tokenizer: {tokenizer}")
    heldout = sorted(str(p) for p in (data_root / "heldout").glob("heldout-*.tar"))

    # 2. training ------------------------------------------------------------------------------------
    gpus = torch.cuda.device_count()
    nproc = min(2, gpus) if gpus else 2
    layout = ["parallel.tp=2"] if nproc == 2 else []
    what = "tensor parallelism (TP2)" if nproc == 2 else "one process"
    _say(f"2/5 training the tiny NVLM-D with torchrun on {nproc} {'GPU' if gpus else 'CPU'} processes, {what}")
    overrides = [
        "experiment=demo", *layout, f"run.dir={run_dir}", f"train.iters={args.iters}", f"train.seed={seed}",
        f"data.cache_dir={cache}", f"data.demo_train_samples={args.train_samples}",
        f"data.demo_heldout_samples={args.heldout_samples}", f"data.tokenizer_dir={tokenizer}",
    ]
    if args.fast:
        overrides += ["train.log_interval=2", "train.save_interval=6", "train.eval_interval=6",
                      "optimizer.warmup_iters=2", "run.wandb_mode=disabled"]
    configs = ("experiment/demo.yaml", "data/demo.yaml", "model/nvlm_d_tiny.yaml")
    set_aside_stale_run(run_dir, {"overrides": [o for o in overrides if not o.startswith("run.dir=")],
                                  "nproc": nproc, "prompt_format": DEFAULT_PROMPT_FORMAT,
                                  "configs": {c: hashlib.sha1((config_dir() / c).read_bytes()).hexdigest()
                                              for c in configs}})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "nvlm_train.cli.train", *overrides]
    _run(cmd, stream=True)
    checkpoint = run_dir / "checkpoints"
    max_tiles = _saved_max_tiles(checkpoint)

    # 3. megatron accuracy ---------------------------------------------------------------------------
    _say("3/5 held-out accuracy of the megatron checkpoint (greedy, exact match)")
    mega = _last_json(_run([sys.executable, "-m", "nvlm_train.cli.demo_eval", "megatron", "--checkpoint",
                            str(checkpoint), "--data-root", str(data_root)]))
    _say(f"    megatron accuracy {mega['accuracy']:.1%} ({mega['correct']}/{mega['total']}) {mega['per_task']}")

    # 4. export + HF chat accuracy -------------------------------------------------------------------
    _say(f"4/5 exporting to HF ({hf_dir}) and asking model.chat the same questions")
    _run([sys.executable, "-m", "nvlm_train.cli.convert", "mcore-to-hf", "--checkpoint", str(checkpoint),
          "--out", str(hf_dir), "--tokenizer", str(tokenizer), "--dtype", "fp32", "--force"])
    hf = _last_json(_run([sys.executable, "-m", "nvlm_train.cli.demo_eval", "hf", "--hf", str(hf_dir),
                          "--data-root", str(data_root), "--max-tiles", str(max_tiles)]))
    _say(f"    HF chat accuracy {hf['accuracy']:.1%} ({hf['correct']}/{hf['total']}) {hf['per_task']}")

    # 5. plot and summary ----------------------------------------------------------------------------
    from nvlm_train.inference.plot import plot_loss_curve

    png = plot_loss_curve(run_dir / "metrics.jsonl", work / "loss_curve.png", title="tiny NVLM-D on synthetic shapes")
    elapsed = time.time() - start
    _say(f"5/5 loss curve: {png}")
    _say(f"    run dir: {run_dir}  (metrics.jsonl, config.yaml, checkpoints/, wandb/)")
    _say(f"    HF export: {hf_dir}  (load it with AutoModel.from_pretrained(..., trust_remote_code=True))")
    _say(f"    finished in {elapsed / 60:.1f} min")
    agree = abs(mega["accuracy"] - hf["accuracy"]) <= MAX_DISAGREEMENT
    meets = mega["accuracy"] >= MIN_ACCURACY
    if not agree:
        _say(f"FAILED: HF chat accuracy {hf['accuracy']:.1%} differs from megatron's by more than 2 points")
    if not meets and not args.fast:
        _say(f"FAILED: held-out accuracy {mega['accuracy']:.1%} is below the {MIN_ACCURACY:.0%} target")
    print(json.dumps({
        "accuracy": hf["accuracy"], "megatron_accuracy": mega["accuracy"], "run_dir": str(run_dir),
        "checkpoint": str(checkpoint), "hf_dir": str(hf_dir), "heldout": heldout, "loss_curve": str(png),
        "parallelism": what, "elapsed_s": round(elapsed, 1), "per_task": mega["per_task"],
        "meets_accuracy_target": meets, "prompt_format": mega["prompt_format"],
    }))
    if not agree:
        return 1
    return 0 if meets or args.fast else 3


if __name__ == "__main__":
    sys.exit(main())
