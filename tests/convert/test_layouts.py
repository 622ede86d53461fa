"""mcore checkpoints saved at TP1, TP2 and PP2 -> HF: same weights, same logits, same greedy tokens.

TP1 is ``hf-to-mcore``'s own (streamed) output; TP2 and PP2 are what the trainer does with it
(``init_from`` at TP2 or PP2: the architecture check, a resharding load, then a save at that layout).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from nvlm_train.convert.export import ExportOptions, export_checkpoint
from tests.convert.helpers import REPO, assert_bit_identical, cli, load_export
from tests.convert.workers import resave_worker
from tests.dist import run_ranks
from tests.fixtures.hf_builders import save_sharded_safetensors

pytestmark = pytest.mark.multirank

LAYOUTS = ("tp1", "tp2", "pp2")
RUN_AT = {"tp1": (1, 1), "tp2": (2, 1), "pp2": (1, 2)}  # our model runs at the layout that saved it


@pytest.fixture(scope="module")
def checkpoints(hf_source, ckpt_tp1, tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    run_ranks(resave_worker, 2, 2, 1, str(ckpt_tp1), str(root / "tp2"))
    run_ranks(resave_worker, 2, 1, 2, str(ckpt_tp1), str(root / "pp2"))
    return {"tp1": ckpt_tp1, "tp2": root / "tp2", "pp2": root / "pp2"}


@pytest.fixture(scope="module")
def exports(checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for name, ckpt in checkpoints.items():
        report = export_checkpoint(ExportOptions(ckpt, root / name, max_shard_bytes=200_000, progress=False))
        assert report.num_shards > 1
        out[name] = root / name
    return out


def test_export_of_every_layout_is_bit_identical_to_the_source(hf_source, exports):
    source = load_export(hf_source)
    for name in LAYOUTS:
        assert_bit_identical(source, load_export(exports[name]))


def test_export_directory_layout(exports, hf_source):
    out = exports["tp2"]
    for name in ("config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json",
                 "vocab.json", "merges.txt", "tokenizer_config.json", "modeling_nvlm_d.py",
                 "configuration_nvlm_d.py", "modeling_intern_vit.py", "configuration_intern_vit.py",
                 "conversation.py"):
        assert (out / name).is_file(), name
    cfg = json.loads((out / "config.json").read_text())
    src = json.loads((hf_source / "config.json").read_text())
    assert cfg["architectures"] == ["NVLM_D"] and cfg["llm_config"]["architectures"] == ["Qwen2ForCausalLM"]
    for key in ("downsample_ratio", "force_image_size", "ps_version", "select_layer", "template", "auto_map"):
        assert cfg[key] == src[key], key
    # keys the released file does not have: found from the tokenizer and the LLM (projector = LLM FFN)
    assert (cfg["img_context_token_id"], cfg["projector_intermediate_size"], cfg["projector_layernorm_eps"]) == (
        3, src["llm_config"]["intermediate_size"], 1e-5)
    runtime = {"bos_token_id", "eos_token_id", "use_flash_attn", "initializer_range", "torch_dtype", "use_bfloat16",
               "transformers_version"}  # from our tokenizer / the checkpoint dtype / runtime choices
    for section in ("vision_config", "llm_config"):  # key spellings: test_roundtrip
        for key, value in src[section].items():
            if key in cfg[section] and key not in runtime | {"rope_scaling"}:
                assert cfg[section][key] == value, (section, key)
    # rope scaling is the saving run's: TP2 was re-saved by a run with nvlm_d_tiny's config (none), while
    # hf-to-mcore's own checkpoint carries the source's (test_roundtrip)
    assert cfg["llm_config"]["rope_scaling"] is None
    assert cfg["torch_dtype"] == "float32"  # kept from the fp32 checkpoint


def _verify_all(pairs):
    code = ("import json, sys\nfrom nvlm_train.convert.verify import verify\n"
            "if __name__ == '__main__':\n"
            "    print(json.dumps([verify(c, h, tp=t, pp=p).as_dict() for c, h, t, p in json.loads(sys.argv[1])]))")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(pairs)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_logits_and_greedy_generations_match(checkpoints, exports):
    reports = _verify_all([[str(checkpoints[n]), str(exports[n]), *RUN_AT[n]] for n in LAYOUTS])
    for name, report in zip(LAYOUTS, reports):
        assert (report["tp"], report["pp"]) == RUN_AT[name]
        kinds = {c["name"]: c for c in report["cases"]}
        assert set(kinds) == {"text", "one-tile", "many-tiles", "two-images"}
        assert kinds["many-tiles"]["tiles"] > 2 and kinds["two-images"]["tiles"] >= 2
        for case in report["cases"]:
            assert case["max_abs_diff"] < 1e-4, (name, case)
            assert case["generations_agree"] and len(case["ours"]) > 0, (name, case)
        assert report["ok"]


def test_verify_cli_fails_on_a_wrong_export(checkpoints, exports, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(exports["tp1"], bad)
    state = load_export(bad)
    for f in bad.glob("model-*.safetensors"):
        f.unlink()
    state["language_model.model.layers.1.mlp.down_proj.weight"] += 0.05
    save_sharded_safetensors(state, bad)
    proc = cli("verify", "--checkpoint", str(checkpoints["tp1"]), "--hf", str(bad), check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "FAILED" in proc.stdout
    # layer 0 and the ViT agree; the changed tensor's layer is the first block that diverges
    assert "first diverging block: text: language_model.model.layers.1 " in proc.stdout, proc.stdout


def _released_vit_reference(state: dict, vc: dict, pixels: torch.Tensor) -> torch.Tensor:
    """InternViT as the released NVLM-D attention is described (docs/architecture.md), written from that text: qkv rows
    [Q 32 heads; K 32 heads; V 32 heads] (real heads, then zero dummies), q/k RMSNorm dividing the sum of
    squares of the first C channels by C and scaling all (heads + dummies) x head_dim channels, attention
    over all the stored heads, proj from the stored width. No final norm; class token kept."""
    import torch.nn.functional as F

    c, eps, heads = vc["hidden_size"], vc["layer_norm_eps"], vc["num_attention_heads"]
    head_dim = c // heads
    e = "vision_model.embeddings."
    x = F.conv2d(pixels, state[e + "patch_embedding.weight"], state[e + "patch_embedding.bias"],
                 stride=vc["patch_size"])
    x = x.flatten(2).transpose(1, 2)  # [n, patches, C]
    x = torch.cat([state[e + "class_embedding"].expand(x.shape[0], 1, c), x], dim=1) + state[e + "position_embedding"]

    def rms(t, w, real):
        return t * torch.rsqrt(t[..., :real].pow(2).sum(-1, keepdim=True) / real + eps) * w

    for i in range(vc["num_hidden_layers"]):
        p = f"vision_model.encoder.layers.{i}."
        q, k, v = (x_ @ w.T for x_, w in zip([rms(x, state[p + "norm1.weight"], c)] * 3,
                                             state[p + "attn.qkv.weight"].chunk(3)))
        stored = q.shape[-1] // head_dim
        q, k = rms(q, state[p + "attn.q_norm.weight"], c), rms(k, state[p + "attn.k_norm.weight"], c)
        n, s_ = x.shape[:2]
        q, k, v = (t.reshape(n, s_, stored, head_dim).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, s_, stored * head_dim)
        x = x + (a @ state[p + "attn.proj.weight"].T + state[p + "attn.proj.bias"]) * state[p + "ls1"]
        h = rms(x, state[p + "norm2.weight"], c) @ state[p + "mlp.fc1.weight"].T + state[p + "mlp.fc1.bias"]
        h = F.gelu(h) @ state[p + "mlp.fc2.weight"].T + state[p + "mlp.fc2.bias"]
        x = x + h * state[p + "ls2"]
    return x


def test_exported_vision_tower_is_the_released_layout_and_computes_the_released_vit(exports):
    from transformers import AutoModel
    from transformers.models.internvl.configuration_internvl import InternVLVisionConfig
    from transformers.models.internvl.modeling_internvl import InternVLVisionModel

    out = exports["tp2"]
    state = load_export(out)
    vc = json.loads((out / "config.json").read_text())["vision_config"]
    width, heads, layers = vc["hidden_size"], vc["num_attention_heads"], vc["num_hidden_layers"]
    # the released layout: 5 real heads of 16 + 7 zero dummy heads; vision_config says the real count
    head_dim, stored = width // heads, (heads + 7) * (width // heads)
    assert (heads, vc["num_dummy_heads"]) == (5, 7)
    for i in range(layers):
        src = f"vision_model.encoder.layers.{i}."
        qkv = state[src + "attn.qkv.weight"]
        assert tuple(qkv.shape) == (3 * stored, width)
        assert not qkv.reshape(3, heads + 7, head_dim, width)[:, heads:].any()
        assert tuple(state[src + "attn.q_norm.weight"].shape) == (stored,)
        assert tuple(state[src + "attn.proj.weight"].shape) == (width, stored)
        assert not state[src + "attn.proj.weight"][:, width:].any()

    pixels = torch.randn(3, 3, vc["image_size"], vc["image_size"], generator=torch.Generator().manual_seed(0))
    ours = AutoModel.from_pretrained(str(out), dtype=torch.float32, trust_remote_code=True).eval()
    with torch.no_grad():
        got = ours.vision_model(pixel_values=pixels).last_hidden_state
        released = _released_vit_reference(state, vc, pixels)
    assert got.shape == released.shape == (3, 1 + (vc["image_size"] // vc["patch_size"]) ** 2, width)
    assert (got - released).abs().max().item() <= 1e-5 * max(1.0, released.abs().max().item())

    # transformers' native InternViT (no dummy heads) on the real heads gives the same numbers
    ref_sd = {
        "embeddings.cls_token": state["vision_model.embeddings.class_embedding"],
        "embeddings.position_embeddings": state["vision_model.embeddings.position_embedding"],
        "embeddings.patch_embeddings.projection.weight": state["vision_model.embeddings.patch_embedding.weight"],
        "embeddings.patch_embeddings.projection.bias": state["vision_model.embeddings.patch_embedding.bias"],
    }
    names = {"attn.proj.bias": "attention.projection_layer.bias",
             "ls1": "lambda_1", "ls2": "lambda_2", "norm1.weight": "layernorm_before.weight",
             "norm2.weight": "layernorm_after.weight", "mlp.fc1.weight": "mlp.fc1.weight",
             "mlp.fc1.bias": "mlp.fc1.bias", "mlp.fc2.weight": "mlp.fc2.weight", "mlp.fc2.bias": "mlp.fc2.bias"}
    for i in range(layers):
        src, dst = f"vision_model.encoder.layers.{i}.", f"encoder.layer.{i}."
        q, k, v = (t[:width] for t in state[src + "attn.qkv.weight"].chunk(3))  # [all Q; all K; all V]
        ref_sd.update({dst + "attention.q_proj.weight": q, dst + "attention.k_proj.weight": k,
                       dst + "attention.v_proj.weight": v,
                       dst + "attention.q_norm.weight": state[src + "attn.q_norm.weight"][:width],
                       dst + "attention.k_norm.weight": state[src + "attn.k_norm.weight"][:width],
                       dst + "attention.projection_layer.weight": state[src + "attn.proj.weight"][:, :width]})
        ref_sd.update({dst + b: state[src + a] for a, b in names.items()})
    cfg = InternVLVisionConfig(
        hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=vc["intermediate_size"], use_qk_norm=True, norm_type="rms_norm",
        layer_norm_eps=vc["layer_norm_eps"], image_size=vc["image_size"], patch_size=vc["patch_size"],
        attention_bias=False, use_mean_pooling=True, hidden_act="gelu", attn_implementation="eager")
    ref = InternVLVisionModel(cfg).eval()
    missing, unexpected = ref.load_state_dict(ref_sd, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    with torch.no_grad():
        expected = ref(pixel_values=pixels).last_hidden_state
    assert (got - expected).abs().max().item() <= 1e-5 * max(1.0, expected.abs().max().item())
