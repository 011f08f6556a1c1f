"""Gemma 3 text decoders (``Gemma3ForCausalLM``, ``Gemma3TextModel``), as data.

The Llama layout (``llama.py``: the same projections and widths, GeGLU in place of SwiGLU changes no shape) with:
  * four RMSNorms per block (``input_layernorm``, ``post_attention_layernorm`` on the attention output,
    ``pre_feedforward_layernorm``, ``post_feedforward_layernorm`` on the MLP output), all on ``emb``;
  * ``q_norm`` / ``k_norm`` over one head's features, on the per-layer width ``head`` (as Qwen3's);
  * every RMSNorm scales by ``1 + w`` (``offset=1``): the operator expands the effective scale, so a copied feature
    keeps its source's scale, and a rand init (mixing rows that sum to 1) gives ``1 + E w`` as for Llama's ``w``;
  * the post-norms write into the residual stream (``residual_writers``): an added layer of a function-preserving
    start gets a zero post-norm scale (``w = -1``), not zeroed ``o_proj``/``down_proj`` rows, whose zero output
    would sit at the singular point of the RMSNorm after them;
  * the token embedding is multiplied by ``sqrt(hidden_size)`` in the model (``output_scale``): a function-preserving
    width growth by k divides the table by ``sqrt(k)``; the tied head then reads that table, so the final norm
    takes ``1/sqrt(k)`` (not ``1/k``);
  * sliding-window and full-attention layers (``config.layer_types``): a copied layer must keep its kind to be
    exact (the plan notes it otherwise); :func:`ligo_fast.init.grown_layer_types` gives the large model's list.
Attention scores are scaled by ``query_pre_attn_scalar ** -0.5``, a config value that does not follow the head size.
"""

from __future__ import annotations

from dataclasses import replace

from .base import EMBEDDING, LINEAR, NORM, Arch, Module, Width, check_heads, register_architecture
from .llama import BLOCK, HEAD_WIDTH, QK_NORMS, resolve_gqa


def _embed_scale(width: int) -> float:
    return width**0.5


def _gemma_norm(m: Module) -> Module:
    return replace(m, offset=1.0) if m.kind == NORM else m


GEMMA3_LM = Arch(
    family="gemma3",
    model_types=("gemma3_text",),
    classes=("Gemma3ForCausalLM",),
    layers="model.layers",
    widths={
        "emb": Width("model.fuse_width_emb"),
        **{w: Width(f"model.layers.{{l}}.fuse_width_{w}", per_layer=True) for w in ("query", "key", "value", "ffn")},
        **HEAD_WIDTH,
    },
    layer_modules=tuple(
        _gemma_norm(m)
        for m in BLOCK
        + QK_NORMS
        + (Module("pre_feedforward_layernorm", NORM, out="emb"), Module("post_feedforward_layernorm", NORM, out="emb"))
    ),
    modules=(
        Module("model.embed_tokens", EMBEDDING, out="emb", output_scale=_embed_scale),
        Module("model.norm", NORM, out="emb", offset=1.0),
        Module("lm_head", LINEAR, out=None, inp="emb"),
    ),
    check_config=check_heads,
    resolve=resolve_gqa,
    rotary=True,
    residual_writers=("post_attention_layernorm", "post_feedforward_layernorm"),
)
GEMMA3_BASE = GEMMA3_LM.base_model("model", ("Gemma3TextModel",))

for _arch in (GEMMA3_LM, GEMMA3_BASE):
    register_architecture(_arch)
