"""Model FLOPs formula (hand-computed and measured), the step benchmark on CPU, and the Dockerfile.

Docker cannot run on CI machines: the Dockerfile is parsed and checked statically instead.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from nvlm_train.config.model import (
    FreezeConfig,
    LanguageConfig,
    ModelConfig,
    ProjectorConfig,
    VisionConfig,
)
from nvlm_train.config.store import load_model_config
from nvlm_train.model.flops import flops_breakdown, model_flops
from tests.dist import run_ranks

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# FLOPs: a config small enough to count by hand
# --------------------------------------------------------------------------------------------

def hand_config() -> ModelConfig:
    """ViT: 28 px / 14 px patches -> P = 4, s = 5; h 8, f 16, 1 layer.
    Projector: ratio 0.5 -> 1 token per tile, C = 8 / 0.25 = 32, f 12, out 8.
    LLM: 1 layer, h 8, 2 heads x 4 (attention width 8), 1 KV group (kv = 4), f 16, vocab 32."""
    cfg = ModelConfig(
        name="hand",
        vision=VisionConfig(num_layers=1, hidden_size=8, num_attention_heads=2, ffn_hidden_size=16,
                            image_size=28, patch_size=14),
        projector=ProjectorConfig(downsample_ratio=0.5, ffn_hidden_size=12),
        language=LanguageConfig(num_layers=1, hidden_size=8, num_attention_heads=2, num_query_groups=1,
                                ffn_hidden_size=16, vocab_size=32, image_token_id=3),
    )
    cfg.validate()
    assert cfg.tokens_per_tile == 1
    return cfg


# Micro-batch: 2 rows x 6 tokens = 12 tokens, 2 tiles.
# ViT per tile:
#   patch embedding 2 * 4 patches * (3 * 14 * 14) * 8         = 37632
#   linears         2 * 5 * (4 * 8 * 8 + 2 * 8 * 16)          =  5120
#   attention       4 * 5^2 * 8                               =   800
#   -> 43552 per tile, 87104 for 2 tiles (layers: 5920 per tile, 11840 for 2)
# Projector: 2 * 1 * (32 * 12 + 12 * 8) = 960 per tile, 1920 for 2
# LLM:
#   linears   2 * 12 * (8*8 [q] + 2*8*4 [k,v] + 8*8 [o] + 3*8*16 [SwiGLU]) = 2 * 12 * 576 = 13824
#   attention 2 rows * 4 * 6^2 * 8 / 2 (causal half)                        = 1152
#   logits    2 * 12 * 8 * 32                                               = 6144
#   -> 21120
# Forward: 87104 + 1920 + 21120 = 110144
VIT_FWD, VIT_LAYERS, VIT_PATCH, PROJ_FWD = 87104, 11840, 75264, 1920
LM_LIN, LM_ATTN, LM_LOGITS = 13824, 1152, 6144
LM_FWD = LM_LIN + LM_ATTN + LM_LOGITS
FWD = 110144


@pytest.mark.parametrize(
    ("freeze", "expected"),
    [
        # Everything trains: ViT layers 2x + patch embedding 1x (no pixel gradient), projector 2x, LLM 2x.
        (FreezeConfig(), FWD + (2 * VIT_LAYERS + VIT_PATCH) + 2 * PROJ_FWD + 2 * LM_FWD),  # 255168
        # SFT (ViT frozen): no ViT backward at all.
        (FreezeConfig(vision=True), FWD + 2 * PROJ_FWD + 2 * LM_FWD),  # 156224
        # Pretraining (ViT + LLM frozen): LLM input gradient only (linears, logits 1x; attention 2x).
        (FreezeConfig(vision=True, language=True),
         FWD + 2 * PROJ_FWD + (LM_LIN + LM_LOGITS + 2 * LM_ATTN)),  # 136256
        # Only the ViT trains: gradient flows back through the frozen LLM and projector (1x).
        (FreezeConfig(projector=True, language=True),
         FWD + (2 * VIT_LAYERS + VIT_PATCH) + PROJ_FWD + (LM_LIN + LM_LOGITS + 2 * LM_ATTN)),  # 233280
        # Nothing trains: forward only.
        (FreezeConfig(vision=True, projector=True, language=True), FWD),
    ],
)
def test_flops_hand_computed(freeze, expected):
    cfg = hand_config()
    assert flops_breakdown(cfg, 12, 2, 6, freeze).forward == FWD
    assert model_flops(cfg, 12, 2, 6, freeze) == expected


def test_flops_hand_computed_literals_and_options():
    cfg = hand_config()
    b = flops_breakdown(cfg, 12, 2, 6, FreezeConfig())
    assert (b.vision_forward, b.projector_forward, b.language_forward) == (87104, 1920, 21120)
    assert model_flops(cfg, 12, 2, 6, FreezeConfig()) == 255168
    assert model_flops(cfg, 12, 2, 6, FreezeConfig(vision=True)) == 156224
    assert model_flops(cfg, 12, 2, 6, FreezeConfig(vision=True, language=True)) == 136256
    # Full-square causal attention (older convention): +1152 forward.
    assert flops_breakdown(cfg, 12, 2, 6, FreezeConfig(), full_causal_attention=True).forward == FWD + 1152
    # Text-only micro-batch in pretraining: nothing trainable is reached -> forward only.
    assert model_flops(cfg, 12, 0, 6, FreezeConfig(vision=True, language=True)) == LM_FWD
    # freeze defaults to the config's own.
    cfg.freeze = FreezeConfig(vision=True)
    assert model_flops(cfg, 12, 2, 6) == 156224
    with pytest.raises(ValueError):
        model_flops(cfg, 12, 2, 0)


def test_flops_72b_sanity():
    cfg = load_model_config("nvlm_d_72b")
    # LLM forward per token ~ 2 x 72.7e9 parameters for a short sequence (embedding lookup is no
    # matmul, attention adds ~0.5 %).
    lm = flops_breakdown(cfg, 512, 0, 512, FreezeConfig()).language_forward / 512
    assert abs(lm / (2 * 72_706_203_648) - 1) < 0.05
    # ViT forward per tile ~ 2 x 5.54e9 x 1025 positions, plus bidirectional attention (~5 %).
    vit = flops_breakdown(cfg, 0, 1, 512, FreezeConfig()).vision_forward
    assert 1.0 < vit / (2 * 5_536_496_000 * 1025) < 1.1
    # Projector: 256 tokens through 620.7e6 parameters (LayerNorm's 25600 are no matmul).
    proj = flops_breakdown(cfg, 0, 1, 512, FreezeConfig()).projector_forward
    assert proj == 2 * 256 * (620_717_056 - 2 * 12800)
    # Training step (all trained) = 3x forward up to the patch embedding's missing input gradient.
    b = flops_breakdown(cfg, 4096, 7, 4096, FreezeConfig())
    assert 0.99 < b.total / (3 * b.forward) <= 1.0


# --------------------------------------------------------------------------------------------
# FLOPs vs torch's FlopCounterMode on the real tiny model (matmuls and convolutions)
# --------------------------------------------------------------------------------------------

# Linears, the patch-embedding convolution and the logits layer (its input gradient can run as a
# bmm). SDPA on CPU runs a fused kernel that FlopCounterMode does not count: attention terms are
# subtracted from the formula below.
MATMUL_OPS = {"mm", "addmm", "bmm", "convolution", "convolution_backward"}
FREEZES = [(False, False, False), (True, False, False), (True, False, True), (False, True, True)]


def _measured_worker(rank, world):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from nvlm_train.config.parallel import ParallelConfig
    from nvlm_train.model.builder import build_model
    from nvlm_train.runtime.initialize import initialize_distributed

    initialize_distributed(ParallelConfig(), seed=3)
    out = []
    for vision, projector, language in FREEZES:
        # Unpadded ViT heads: model FLOPs exclude head padding (the tiny config pads 5 -> 8).
        cfg = load_model_config("nvlm_d_tiny", ["model.vision.pad_heads_to_multiple_of=1",
                                                f"model.freeze.vision={vision}",
                                                f"model.freeze.projector={projector}",
                                                f"model.freeze.language={language}"])
        model = build_model(cfg, ParallelConfig()).chunks[0]
        b, s, tiles = 2, 64, 3
        tokens = torch.randint(cfg.language.image_token_id + 1, cfg.language.vocab_size, (b, s))
        tokens[0, 2:2 + 2 * cfg.tokens_per_tile] = cfg.language.image_token_id
        tokens[1, 5:5 + cfg.tokens_per_tile] = cfg.language.image_token_id
        pos = torch.arange(s).expand(b, s)
        pixels = torch.randn(tiles, 3, cfg.vision.image_size, cfg.vision.image_size)

        def matmul_flops(counter):
            counts = counter.get_flop_counts().get("Global", {})
            return sum(v for k, v in counts.items() if str(k).split(".")[-1] in MATMUL_OPS)

        with FlopCounterMode(display=False) as fwd:
            loss = model(tokens, pos, labels=tokens, pixel_values=pixels)
        with FlopCounterMode(display=False) as bwd:
            loss.sum().backward()
        out.append({"cfg": cfg, "tokens": b * s, "tiles": tiles, "s": s,
                    "fwd": matmul_flops(fwd), "bwd": matmul_flops(bwd)})
    return out


def test_flops_match_flop_counter_on_tiny_model():
    """Matmul/conv FLOPs torch counts in the real forward and backward equal the formula's
    non-attention terms, for each freeze pattern (attention kernels are not counted on CPU)."""
    from nvlm_train.model.flops import language_forward_flops, vision_forward_flops_per_tile

    for r in run_ranks(_measured_worker, 1)[0]:
        cfg, fr = r["cfg"], r["cfg"].freeze
        full = flops_breakdown(cfg, r["tokens"], r["tiles"], r["s"])
        vit_attn = r["tiles"] * vision_forward_flops_per_tile(cfg)[2]
        lm_attn = language_forward_flops(cfg, r["tokens"], r["s"])[1]
        vit_attn_bwd = 0 if fr.vision else 2 * vit_attn
        lm_attn_bwd = 0 if (fr.language and fr.vision and fr.projector) else 2 * lm_attn
        assert r["fwd"] == full.forward - vit_attn - lm_attn, fr
        assert r["bwd"] == full.backward - vit_attn_bwd - lm_attn_bwd, fr


# --------------------------------------------------------------------------------------------
# bench/model_step.py on CPU
# --------------------------------------------------------------------------------------------

def test_model_step_bench_cpu():
    cmd = [sys.executable, str(ROOT / "bench" / "model_step.py"), "--config", "nvlm_d_tiny", "--steps", "2",
           "--warmup", "1", "--seq-length", "128", "--tiles", "2", "--dtype", "fp32",
           "--overrides", "model.freeze.vision=true"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("step_time_s", "tokens_per_s", "tflops_per_s", "mfu", "peak_memory_gb", "model_flops_per_step"):
        assert isinstance(result[key], float) and result[key] > 0, (key, result[key])
    assert result["config"] == "nvlm_d_tiny" and result["dtype"] == "fp32" and result["device"]
    assert result["freeze"] == {"vision": True, "projector": False, "language": False}
    assert "assumed" in result["peak_tflops_note"]
    cfg = load_model_config("nvlm_d_tiny", ["model.freeze.vision=true"])
    assert result["model_flops_per_step"] == model_flops(cfg, 128, 2, 128)
    assert result["tokens_per_s"] == pytest.approx(128 / result["step_time_s"])


def test_model_step_bench_help():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "model_step.py"), "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--peak-tflops" in proc.stdout and "--overrides" in proc.stdout


def test_data_throughput_bench_checks_identity_and_reports_json():
    """The bench asserts both routes (worker tiles; device resize + cut) equal the card bit for bit before
    timing, and reports each route end to end (worker + collate + device share) with ratios named for
    what they divide."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "data_throughput.py"), "--repeats", "1",
                           "--max-num", "4"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["device_share_measured_on"] == "cpu" and r["tiles"] > 8
    routes = r["routes"]
    assert set(routes) == {"card", "worker_route", "device_route"}
    for route in routes.values():
        parts = route["worker_s_per_tile"] + route["collate_s_per_tile"] + route["device_s_per_tile"]
        assert route["end_to_end_s_per_tile"] == pytest.approx(parts, rel=1e-2)
        assert route["worker_s_per_tile"] > 0 and route["device_s_per_tile"] >= 0
    ratios = r["ratios"]
    assert ratios["card_end_to_end_over_device_route_end_to_end"] == pytest.approx(
        routes["card"]["end_to_end_s_per_tile"] / routes["device_route"]["end_to_end_s_per_tile"], rel=1e-2)
    assert ratios["card_worker_over_device_route_worker"] == pytest.approx(
        routes["card"]["worker_s_per_tile"] / routes["device_route"]["worker_s_per_tile"], rel=1e-2)
    assert ratios["card_end_to_end_over_worker_route_end_to_end"] == pytest.approx(
        routes["card"]["end_to_end_s_per_tile"] / routes["worker_route"]["end_to_end_s_per_tile"], rel=1e-2)
    # On a CPU the device route's resizes run in the training process: slower end to end than its worker share.
    assert routes["device_route"]["device_s_per_tile"] > routes["device_route"]["worker_s_per_tile"]
    assert set(routes["device_route"]["worker_breakdown_s"]) == {"decode", "plan"}
    assert set(routes["worker_route"]["worker_breakdown_s"]) == {"decode", "resize", "crop"}


# --------------------------------------------------------------------------------------------
# Dockerfile (static checks)
# --------------------------------------------------------------------------------------------

DOCKER_KEYWORDS = {"FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
                   "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: comments dropped, backslash continuations joined."""
    out, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker also drops comment lines inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword, args.strip()))
    assert not pending, "Dockerfile ends inside a continued instruction"
    return out


def substitute(value: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), value)


def parsed_dockerfile() -> tuple[list[tuple[str, str]], dict[str, str]]:
    instructions = dockerfile_instructions((ROOT / "Dockerfile").read_text())
    args = {}
    for keyword, value in instructions:
        if keyword == "ARG" and "=" in value:
            name, _, default = value.partition("=")
            args[name.strip()] = default.strip().strip('"')
    return instructions, args


def pyproject_megatron_pin() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [d.split("==", 1)[1].strip() for d in deps if re.match(r"megatron[-_]core\s*==", d)]
    assert len(pins) == 1, deps
    return pins[0]


def test_dockerfile_syntax_and_base_image():
    instructions, args = parsed_dockerfile()
    assert instructions
    for keyword, value in instructions:
        assert keyword in DOCKER_KEYWORDS, f"unknown Dockerfile instruction {keyword!r}"
        assert keyword.isupper(), keyword
        assert value, f"{keyword} without arguments"
    first = next(k for k, _ in instructions if k != "ARG")
    assert first == "FROM", "the first instruction after global ARGs must be FROM"
    images = [substitute(v.split()[0], args) for k, v in instructions if k == "FROM"]
    assert len(images) == 1
    assert re.fullmatch(r"nvcr\.io/nvidia/pytorch:\d{2}\.\d{2}-py3", images[0]), images[0]
    keywords = [k for k, _ in instructions]
    assert "WORKDIR" in keywords and ("CMD" in keywords or "ENTRYPOINT" in keywords)
    for keyword, value in instructions:
        if keyword in ("CMD", "ENTRYPOINT") and value.startswith("["):
            assert isinstance(json.loads(value), list)


def test_dockerfile_copy_sources_exist_and_are_not_ignored():
    instructions, _ = parsed_dockerfile()
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".venv", "runs", ".git"} <= ignored
    copies = [v for k, v in instructions if k in ("COPY", "ADD")]
    assert copies
    for value in copies:
        parts = json.loads(value) if value.startswith("[") else value.split()
        parts = [p for p in parts if not p.startswith("--")]
        assert len(parts) >= 2, value
        for src in parts[:-1]:
            assert src == "." or list(ROOT.glob(src)), f"COPY source {src!r} does not exist in the repo"
            assert src.split("/")[0] not in ignored, f"COPY source {src!r} is excluded by .dockerignore"


def test_dockerfile_megatron_core_pin_matches_pyproject():
    instructions, args = parsed_dockerfile()
    text = " ".join(substitute(v, args) for k, v in instructions if k == "RUN")
    pins = set(re.findall(r"megatron[-_]core==([0-9][\w.]*)", text))
    assert pins == {pyproject_megatron_pin()}, pins
    # torch is never installed by name: the image's build is kept (constraints pin it).
    assert not re.search(r"pip install[^&]*\btorch\b[=<>]", text)
    assert "-c /etc/nvlm-constraints.txt" in text


def test_dockerfile_requirement_snippet(tmp_path):
    """The inline script that turns pyproject's dependencies into a requirements file works."""
    instructions, _ = parsed_dockerfile()
    text = " ".join(v for k, v in instructions if k == "RUN")
    snippet = re.search(r'python -c "(import re, tomllib.*?)"', text).group(1)
    out = tmp_path / "req.txt"
    snippet = snippet.replace("/tmp/nvlm-requirements.txt", str(out))
    subprocess.run([sys.executable, "-c", snippet], cwd=ROOT, check=True, timeout=60)
    reqs = out.read_text().split()
    names = {re.split(r"[<>=!~;\[]", r, maxsplit=1)[0].lower() for r in reqs}
    assert "torch" not in names and "megatron-core" not in names
    assert {"transformers", "hydra-core", "pytest"} <= names
