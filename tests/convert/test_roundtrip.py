"""HF -> mcore -> HF is bit-identical, dtype kept unless asked; the CLI's surface."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from safetensors.torch import save_file

from nvlm_train.checkpoint.layout import resolve_checkpoint
from nvlm_train.checkpoint.reader import DistCheckpointReader
from nvlm_train.convert.export import ExportOptions, export_checkpoint
from tests.convert.helpers import REPO, assert_bit_identical, cli, load_export, released_tiny_config

# Keys every transformers config writes about itself (generation defaults, bookkeeping), not NVLM-D facts.
_GENERIC = {"_commit_hash", "_name_or_path", "add_cross_attention", "bad_words_ids", "begin_suppress_tokens",
            "chunk_size_feed_forward", "cross_attention_hidden_size", "decoder_start_token_id", "diversity_penalty",
            "do_sample", "early_stopping", "encoder_no_repeat_ngram_size", "exponential_decay_length_penalty",
            "finetuning_task", "forced_bos_token_id", "forced_eos_token_id", "id2label", "is_decoder",
            "is_encoder_decoder", "label2id", "length_penalty", "max_length", "min_length", "no_repeat_ngram_size",
            "num_beam_groups", "num_beams", "num_return_sequences", "output_attentions", "output_hidden_states",
            "output_scores", "pad_token_id", "prefix", "problem_type", "pruned_heads", "remove_invalid_values",
            "repetition_penalty", "return_dict", "return_dict_in_generate", "sep_token_id", "suppress_tokens",
            "task_specific_params", "temperature", "tf_legacy_loss", "tie_encoder_decoder", "tokenizer_class",
            "top_k", "top_p", "torchscript", "transformers_version", "typical_p", "use_bfloat16", "torch_dtype"}


def _released_keys(cfg: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in cfg.items():
        if k in _GENERIC:
            continue
        if isinstance(v, dict) and k in ("vision_config", "llm_config"):
            out.update(_released_keys(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


def test_hf_to_mcore_to_hf_is_bit_identical(hf_source, ckpt_tp1, tmp_path):
    """The released layout (shrunk released config.json, 7 zero dummy ViT heads) round-trips bit for bit,
    and the export spells its config.json as the released file does."""
    assert (ckpt_tp1 / "latest_checkpointed_iteration.txt").read_text().strip() == "0"
    assert (ckpt_tp1 / "iter_0000000" / "metadata.json").is_file()
    export_checkpoint(ExportOptions(ckpt_tp1, tmp_path / "hf", progress=False))
    assert_bit_identical(load_export(hf_source), load_export(tmp_path / "hf"))
    released = _released_keys(released_tiny_config())
    ours = _released_keys(json.loads((tmp_path / "hf" / "config.json").read_text()))
    assert set(released) <= set(ours), sorted(set(released) - set(ours))
    runtime = {"vision_config.use_flash_attn", "vision_config.initializer_range", "llm_config.initializer_range",
               "llm_config.bos_token_id", "llm_config.eos_token_id"}  # runtime choices / from our tokenizer
    differ = {k: (released[k], ours[k]) for k in released if k not in runtime and released[k] != ours[k]}
    assert differ == {}
    assert ours["llm_config.model_type"] == "llama" and ours["vision_config.num_attention_heads"] == 5
    assert ours["llm_config.rope_scaling"] == {"factor": 3.0, "type": "dynamic"}


def test_internvl_layout_flag_writes_plain_vit(hf_source, ckpt_tp1, tmp_path):
    cli("mcore-to-hf", "--checkpoint", str(ckpt_tp1), "--out", str(tmp_path / "plain"), "--layout", "internvl",
        "--no-progress")
    state, cfg = load_export(tmp_path / "plain"), json.loads((tmp_path / "plain" / "config.json").read_text())
    released = load_export(hf_source)
    key = "vision_model.encoder.layers.1.attn."
    assert tuple(state[key + "qkv.weight"].shape) == (240, 80)  # 3 x 5 heads x 16, no dummy heads
    assert tuple(state[key + "proj.weight"].shape) == (80, 80)
    assert (cfg["vision_config"]["num_dummy_heads"], cfg["llm_config"]["model_type"]) == (0, "qwen2")
    # the same real heads: the released [Q 12 heads; K; V] blocks cut to their first 5 heads
    assert torch.equal(state[key + "qkv.weight"], torch.cat([b[:80] for b in released[key + "qkv.weight"].chunk(3)]))
    assert torch.equal(state[key + "proj.weight"], released[key + "proj.weight"][:, :80])
    assert torch.equal(state[key + "q_norm.weight"], released[key + "q_norm.weight"][:80])


def test_bf16_is_kept_and_dtype_flag_casts(hf_source, tmp_path):
    src = tmp_path / "bf16"
    src.mkdir()
    for f in hf_source.iterdir():
        if f.suffix != ".safetensors":
            (src / f.name).write_bytes(f.read_bytes())
    index = json.loads((hf_source / "model.safetensors.index.json").read_text())
    state = {k: v.to(torch.bfloat16) for k, v in load_export(hf_source).items()}
    for shard in set(index["weight_map"].values()):
        save_file({k: state[k] for k, s in index["weight_map"].items() if s == shard}, str(src / shard),
                  metadata={"format": "pt"})
    ckpt = tmp_path / "ckpt"
    cli("hf-to-mcore", "--hf", str(src), "--out", str(ckpt), "--no-progress")
    with DistCheckpointReader(resolve_checkpoint(ckpt)[0]) as reader:
        assert reader.dtype("language_model.decoder.layers.mlp.linear_fc1.weight") == torch.bfloat16
    export_checkpoint(ExportOptions(ckpt, tmp_path / "out_bf16", progress=False))
    assert_bit_identical(state, load_export(tmp_path / "out_bf16"))
    assert json.loads((tmp_path / "out_bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    export_checkpoint(ExportOptions(ckpt, tmp_path / "out_fp32", dtype="fp32", progress=False))
    assert_bit_identical({k: v.float() for k, v in state.items()}, load_export(tmp_path / "out_fp32"))


def test_help_and_wrapper():
    for args in ([], ["hf-to-mcore"], ["mcore-to-hf"], ["verify"]):
        proc = subprocess.run([sys.executable, "tools/convert/nvlm_convert.py", *args, "--help"], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "usage: nvlm-convert" in proc.stdout, proc.stderr
    assert "--checkpoint" in proc.stdout and "--tolerance" in proc.stdout


def test_exported_chat_template_renders_the_trained_prompt(ckpt_tp1, tmp_path):
    """apply_chat_template (what vLLM's chat API uses) gives the released chat()'s string, by hand."""
    from transformers import AutoTokenizer

    out = tmp_path / "hf"
    export_checkpoint(ExportOptions(ckpt_tp1, out, progress=False))
    sys_turn = "<|im_start|>system\nAnswer the questions.<|im_end|>"
    cases = [
        ([{"role": "user", "content": "Hello, who are you?"}],
         f"{sys_turn}<|im_start|>user\nHello, who are you?<|im_end|><|im_start|>assistant\n"),
        ([{"role": "user", "content": "<image>\nDescribe it."}, {"role": "assistant", "content": "A cat."},
          {"role": "user", "content": "Colour?"}],
         f"{sys_turn}<|im_start|>user\n<image>\nDescribe it.<|im_end|><|im_start|>assistant\nA cat.<|im_end|>"
         "<|im_start|>user\nColour?<|im_end|><|im_start|>assistant\n"),
        ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
         "<|im_start|>system\nBe brief.<|im_end|><|im_start|>user\nHi<|im_end|><|im_start|>assistant\n"),
        ([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}],
         f"{sys_turn}<|im_start|>user\n<image>\nWhat is it?<|im_end|><|im_start|>assistant\n"),
    ]
    for use_fast in (False, True):
        tok = AutoTokenizer.from_pretrained(str(out), use_fast=use_fast)
        for messages, expected in cases:
            assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == expected
