"""Model FLOPs of one NVLM-D training micro-batch (forward + backward), for throughput and MFU.

Conventions
-----------
* A matmul ``[m, k] x [k, n]`` costs ``2 * m * k * n`` FLOPs (one multiply + one add per MAC).
  Only matmuls (linears, the patch-embedding convolution, the two attention products) count;
  norms, activations, RoPE, softmax, LayerScale, residual adds, the embedding lookup and the
  loss are elementwise / memory-bound and ignored, as in Megatron-LM's and PaLM's MFU formulas.
* "Model FLOPs" (MFU, not HFU): activation recomputation is NOT counted, and neither is padding
  work -- the unpadded vocabulary and the unpadded ViT head count are used (megatron's vocab
  padding to 128 x TP and ``pad_heads_to_multiple_of`` add hardware work but no model work).

Forward, per part (``h`` hidden, ``f`` FFN width, ``L`` layers)
------------------------------------------------------------
* ViT, per tile, with ``P = (image_size / patch_size)^2`` patches and ``s = P + 1`` (class token)::

      patch embedding      2 * P * (channels * patch^2) * h
      per layer, linears   2 * s * (3h*h [qkv] + h*h [proj] + 2*h*f [fc1, fc2])
      per layer, attention 4 * s^2 * h      (QK^T and AV; bidirectional, so the full s^2)

* Projector, per tile, with ``T = tokens_per_tile`` and ``C = h_vit / ratio^2`` (pixel shuffle)::

      2 * T * (C * f_proj + f_proj * h_llm)

* LLM, per micro-batch of ``N`` real tokens (padding excluded) in packed samples of lengths
  ``L_i`` (GQA: ``kv = groups * head_dim``)::

      per layer, linears   2 * N * (h*h [q] + 2*h*kv [k, v] + h*h [o] + 3*h*f [SwiGLU gate, up, down])
      per layer, attention 4 * sum_i(L_i^2) * h * 1/2
      logits               2 * N * h * vocab

  Causal attention counts HALF of each sample's ``L_i^2`` score matrix (the causal triangle: the
  work a causal kernel such as flash attention actually does; current Megatron-LM convention).
  Pass ``full_causal_attention=True`` for the older convention (Megatron-LM 2021 / PaLM) that
  counts the full square. Packed samples attend only within themselves (THD), so a row of
  samples costs sum L_i^2, not ``seq_length^2``; give ``sum_sq_lengths``
  (``nvlm_train.model.token_counts``). Without it every row is ONE sample of ``seq_length``.

Backward
--------
A trained block costs 2x its forward in backward: 1x for the input (activation) gradients and
1x for the weight gradients. A frozen block needs no weight gradients but still needs its input
gradients (1x) when something BEFORE it in the graph trains, because the gradient must flow
through it. The graph is ViT -> projector -> LLM, hence:

=============  =================================  ===========================================
part           trained                            frozen
=============  =================================  ===========================================
ViT            layers 2x; patch embedding 1x      0 -- nothing precedes the ViT (the model
               (weight grad only: no gradient     runs a frozen ViT under ``no_grad``)
               w.r.t. pixels is ever needed)
projector      2x (its LayerNorm trains, so fc1's 1x if the ViT trains (input gradient), else 0
               input gradient is needed too)
LLM            2x everywhere                      if the projector or the ViT trains: linears and
                                                  logits 1x (input gradient only), core
                                                  attention 2x (it has no weights: all of its
                                                  backward -- dQ, dK, dV -- is input gradient);
                                                  else 0
=============  =================================  ===========================================

With no tiles in the micro-batch the ViT and projector do no work, and nothing flows back
into them. Examples: NVLM-D pretraining (ViT + LLM frozen, projector trained) = forward +
projector 2x + LLM input-gradient backward; SFT (ViT frozen) = forward + (projector + LLM) 2x.
"""

from __future__ import annotations

from dataclasses import dataclass

from nvlm_train.config.model import FreezeConfig, ModelConfig


@dataclass(frozen=True)
class FlopsBreakdown:
    """Forward and backward FLOPs per part for one micro-batch."""

    vision_forward: float
    projector_forward: float
    language_forward: float
    vision_backward: float
    projector_backward: float
    language_backward: float

    @property
    def forward(self) -> float:
        return self.vision_forward + self.projector_forward + self.language_forward

    @property
    def backward(self) -> float:
        return self.vision_backward + self.projector_backward + self.language_backward

    @property
    def total(self) -> float:
        return self.forward + self.backward


def vision_forward_flops_per_tile(model: ModelConfig) -> tuple[float, float, float]:
    """(patch embedding, layer linears, layer attention) forward FLOPs of one tile, all layers."""
    v = model.vision
    patches = v.patches_per_side**2
    s = patches + 1
    h, f = v.hidden_size, v.ffn_hidden_size
    patch_embed = 2.0 * patches * (v.num_channels * v.patch_size**2) * h
    linears = v.num_layers * 2.0 * s * (4 * h * h + 2 * h * f)
    attention = v.num_layers * 4.0 * s * s * h
    return patch_embed, linears, attention


def projector_forward_flops_per_tile(model: ModelConfig) -> float:
    in_size = model.vision.hidden_size / model.projector.downsample_ratio**2
    f = model.projector.ffn_hidden_size
    return 2.0 * model.tokens_per_tile * (in_size * f + f * model.language.hidden_size)


def _sum_sq(tokens: int, seq_length: int | None, sum_sq_lengths: float | None) -> float:
    if sum_sq_lengths is not None:
        if sum_sq_lengths < 0:
            raise ValueError(f"need sum_sq_lengths >= 0 (got {sum_sq_lengths})")
        return float(sum_sq_lengths)
    if seq_length is None or seq_length <= 0:
        raise ValueError(f"need seq_length > 0 or sum_sq_lengths (got seq_length={seq_length})")
    return tokens / seq_length * float(seq_length) ** 2  # rows of one full-length sample


def language_forward_flops(model: ModelConfig, tokens: int, seq_length: int | None = None,
                           full_causal_attention: bool = False, *,
                           sum_sq_lengths: float | None = None) -> tuple[float, float, float]:
    """(layer linears, layer attention, logits) forward FLOPs of ``tokens`` tokens, all layers."""
    lm = model.language
    h, f = lm.hidden_size, lm.ffn_hidden_size
    kv = lm.num_query_groups * lm.head_dim
    attn_width = lm.num_attention_heads * lm.head_dim
    sum_sq = _sum_sq(tokens, seq_length, sum_sq_lengths)
    linears = lm.num_layers * 2.0 * tokens * (2 * h * attn_width + 2 * h * kv + 3 * h * f)
    causal = 1.0 if full_causal_attention else 0.5
    attention = lm.num_layers * 4.0 * sum_sq * attn_width * causal
    logits = 2.0 * tokens * h * lm.vocab_size
    return linears, attention, logits


def flops_breakdown(model: ModelConfig, tokens: int, tiles: int, seq_length: int | None = None,
                    freeze: FreezeConfig | None = None, *, sum_sq_lengths: float | None = None,
                    full_causal_attention: bool = False) -> FlopsBreakdown:
    """Per-part FLOPs of one micro-batch: ``tokens`` real LLM tokens (image-context tokens included,
    padding not) and ``tiles`` image tiles; the attention from ``sum_sq_lengths`` (sum of squared sample
    lengths) or, without it, rows of ``seq_length``. ``freeze`` defaults to ``model.freeze``."""
    if tokens < 0 or tiles < 0:
        raise ValueError(f"need tokens >= 0, tiles >= 0 (got {tokens}, {tiles})")
    sum_sq = _sum_sq(tokens, seq_length, sum_sq_lengths)
    freeze = model.freeze if freeze is None else freeze
    patch, vit_lin, vit_attn = vision_forward_flops_per_tile(model)
    vit_fwd = tiles * (patch + vit_lin + vit_attn)
    proj_fwd = tiles * projector_forward_flops_per_tile(model)
    lm_lin, lm_attn, logits = language_forward_flops(model, tokens, None, full_causal_attention,
                                                     sum_sq_lengths=sum_sq)
    lm_fwd = lm_lin + lm_attn + logits

    vit_trains = not freeze.vision and tiles > 0
    proj_trains = not freeze.projector and tiles > 0
    vit_bwd = tiles * (patch + 2 * (vit_lin + vit_attn)) if vit_trains else 0.0
    if proj_trains:
        proj_bwd = 2 * proj_fwd
    elif vit_trains:
        proj_bwd = proj_fwd
    else:
        proj_bwd = 0.0
    if not freeze.language:
        lm_bwd = 2 * lm_fwd
    elif vit_trains or proj_trains:
        lm_bwd = lm_lin + logits + 2 * lm_attn
    else:
        lm_bwd = 0.0
    return FlopsBreakdown(vit_fwd, proj_fwd, lm_fwd, vit_bwd, proj_bwd, lm_bwd)


def model_flops(model_cfg: ModelConfig, tokens: int, tiles: int, seq_length: int | None = None,
                freeze: FreezeConfig | None = None, *, sum_sq_lengths: float | None = None,
                full_causal_attention: bool = False) -> float:
    """Total model FLOPs of one forward + backward step of a micro-batch (see module docstring)."""
    return flops_breakdown(
        model_cfg, tokens, tiles, seq_length, freeze, sum_sq_lengths=sum_sq_lengths,
        full_causal_attention=full_causal_attention,
    ).total
