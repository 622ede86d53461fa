"""The declarative key table: which megatron tensor becomes which HF tensors, and back.

Megatron names are our model's global parameter names (``...decoder.layers.{i}...`` counted over the
whole tower); HF names are the released NVLM-D-72B layout. ``op`` names a transform of
``transforms.TRANSFORMS``. ``narrow`` (export only) strips megatron padding before the transform:
``(dim, size)`` keeps the first ``size`` entries along ``dim`` where ``size`` is looked up in
``padding_sizes`` (zero vision heads appended at the end, vocabulary rows appended at the end).
Every rule with ``{i}`` is repeated for each layer of its tower (``vision_model.`` or ``language_model.``).
"""

from __future__ import annotations

from dataclasses import dataclass

from nvlm_train.config.model import ModelConfig

V, VL = "vision_model.", "vision_model.decoder.layers.{i}."
L, LL = "language_model.", "language_model.decoder.layers.{i}."
HV, HVL = "vision_model.embeddings.", "vision_model.encoder.layers.{i}."
HL, HLL = "language_model.model.", "language_model.model.layers.{i}."


@dataclass(frozen=True)
class Rule:
    mcore: str
    hf: tuple[str, ...]
    op: str = "copy"
    narrow: tuple[int, str] | None = None

    def at(self, i: int | None) -> Rule:
        if i is None:
            return self
        return Rule(self.mcore.format(i=i), tuple(h.format(i=i) for h in self.hf), self.op, self.narrow)

    @property
    def layered(self) -> bool:
        return "{i}" in self.mcore


def _r(mcore: str, hf: str | tuple[str, ...], op: str = "copy", narrow: tuple[int, str] | None = None) -> Rule:
    return Rule(mcore, (hf,) if isinstance(hf, str) else hf, op, narrow)


# One table for both directions. Export (mcore -> HF) writes tensors in this order and narrows away
# megatron's padding; import (HF -> mcore) ignores ``narrow``: the model's own layout pads
# (``ParamLayout.shard``).
RULES: tuple[Rule, ...] = (
    _r(V + "class_embedding", HV + "class_embedding"),
    _r(V + "position_embedding", HV + "position_embedding"),
    _r(V + "patch_embedding.weight", HV + "patch_embedding.weight"),
    _r(V + "patch_embedding.bias", HV + "patch_embedding.bias"),
    _r(VL + "input_layernorm.weight", HVL + "norm1.weight"),
    _r(VL + "self_attention.linear_qkv.weight", HVL + "attn.qkv.weight", "vit_qkv", (0, "vit_qkv_rows")),
    _r(VL + "self_attention.q_layernorm.weight", HVL + "attn.q_norm.weight", "vit_heads", (0, "vit_width")),
    _r(VL + "self_attention.k_layernorm.weight", HVL + "attn.k_norm.weight", "vit_heads", (0, "vit_width")),
    _r(VL + "self_attention.linear_proj.weight", HVL + "attn.proj.weight", "vit_proj", (1, "vit_width")),
    _r(VL + "self_attention.linear_proj.bias", HVL + "attn.proj.bias"),
    _r(VL + "self_attention.layer_scale.weight", HVL + "ls1"),
    _r(VL + "pre_mlp_layernorm.weight", HVL + "norm2.weight"),
    _r(VL + "mlp.linear_fc1.weight", HVL + "mlp.fc1.weight"),
    _r(VL + "mlp.linear_fc1.bias", HVL + "mlp.fc1.bias"),
    _r(VL + "mlp.linear_fc2.weight", HVL + "mlp.fc2.weight"),
    _r(VL + "mlp.linear_fc2.bias", HVL + "mlp.fc2.bias"),
    _r(VL + "mlp.layer_scale.weight", HVL + "ls2"),
    _r("projector.layer_norm.weight", "mlp1.0.weight"),
    _r("projector.layer_norm.bias", "mlp1.0.bias"),
    _r("projector.linear_fc1.weight", "mlp1.1.weight"),
    _r("projector.linear_fc2.weight", "mlp1.3.weight"),
    _r(L + "embedding.word_embeddings.weight", HL + "embed_tokens.weight", narrow=(0, "vocab")),
    _r(LL + "input_layernorm.weight", HLL + "input_layernorm.weight"),
    _r(LL + "self_attention.linear_qkv.weight",
       tuple(HLL + f"self_attn.{p}_proj.weight" for p in "qkv"), "gqa_qkv"),
    _r(LL + "self_attention.linear_qkv.bias", tuple(HLL + f"self_attn.{p}_proj.bias" for p in "qkv"), "gqa_qkv"),
    _r(LL + "self_attention.linear_proj.weight", HLL + "self_attn.o_proj.weight"),
    _r(LL + "pre_mlp_layernorm.weight", HLL + "post_attention_layernorm.weight"),
    _r(LL + "mlp.linear_fc1.weight", (HLL + "mlp.gate_proj.weight", HLL + "mlp.up_proj.weight"), "gate_up"),
    _r(LL + "mlp.linear_fc2.weight", HLL + "mlp.down_proj.weight"),
    _r(L + "decoder.final_layernorm.weight", HL + "norm.weight"),
    _r(L + "output_layer.weight", "language_model.lm_head.weight", narrow=(0, "vocab")),
)

def _tower(rule: Rule) -> str:
    return rule.mcore.split(".", 1)[0]


def num_layers(rule: Rule, model: ModelConfig) -> int | None:
    if not rule.layered:
        return None
    return model.vision.num_layers if rule.mcore.startswith(V) else model.language.num_layers


def expand(table: tuple[Rule, ...], model: ModelConfig) -> list[Rule]:
    """Concrete rules: layered rules repeated per layer, grouped layer by layer (streaming order)."""
    out: list[Rule] = []
    pending: list[Rule] = []

    def flush() -> None:
        if pending:
            for i in range(num_layers(pending[0], model) or 0):
                out.extend(r.at(i) for r in pending)
            pending.clear()

    for rule in table:
        if rule.layered and (not pending or _tower(pending[0]) == _tower(rule)):
            pending.append(rule)
            continue
        flush()
        if rule.layered:
            pending.append(rule)
        else:
            out.append(rule)
    flush()
    return out


def padding_sizes(model: ModelConfig) -> dict[str, int]:
    """Real (unpadded) sizes along the padded dimensions named by ``Rule.narrow``."""
    v = model.vision
    return {
        "vit_qkv_rows": 3 * v.num_attention_heads * v.head_dim,
        "vit_width": v.num_attention_heads * v.head_dim,
        "vocab": model.language.vocab_size,
    }
