"""Llama-family decoders (Llama, Mistral, Qwen2: one layout; Qwen3: the same with q/k norms), as data.

Tying, carried over from the official BERT scheme:
  * ``emb``: the residual stream: token embeddings, the input of q/k/v/gate/up, the output of o_proj and
    down_proj, both RMSNorms of every block, the final norm, and the input of an untied ``lm_head``;
  * per large layer: ``query``, ``key``, ``value`` (q/k/v outputs; with grouped-query attention key and value
    have their own, smaller sizes, and the KV head count may grow), ``ffn`` (SwiGLU: the outputs of gate and
    up share it, the input of down uses it);
  * o_proj's input is the concatenated attention output. With plain multi-head attention (KV heads = heads in
    both models) its features are value features, so it uses ``value`` as the official code does; with GQA
    they are repeated value heads, which no single value matrix describes, so it gets its own per-layer
    width ``attn``.
  * RMSNorm weights expand like LayerNorm weights (no bias). q/k/v/o biases (Qwen2, ``attention_bias``) and
    MLP biases (``mlp_bias``) are grown when the small model has them.
  * Qwen3's ``q_norm`` / ``k_norm`` are RMSNorms over one head's features (applied to every head): they grow with
    the head size, not with ``emb``, through their own per-layer width ``head`` (shared by q and k, whose dims
    pair up in the attention score); with the head size kept (more heads), they are copied unchanged.
  * tied input/output embeddings (``tie_word_embeddings``): the large model's lm_head *is* its token
    embedding, so it is produced once, from the embedding, and stays tied.
RoPE: the produced q/k weights run in the HF model whatever head size the large config asks for; when the
head size changes, the rotary frequencies of each dimension change with it, so a grown model's attention
is not exactly the small model's even where the width matrices copy old features.
"""

from __future__ import annotations

from dataclasses import replace

from .base import EMBEDDING, LINEAR, NORM, Arch, Module, Width, check_heads, register_architecture

BLOCK = (
    Module("self_attn.q_proj", LINEAR, out="query", inp="emb"),
    Module("self_attn.k_proj", LINEAR, out="key", inp="emb"),
    Module("self_attn.v_proj", LINEAR, out="value", inp="emb"),
    Module("self_attn.o_proj", LINEAR, out="emb", inp="value"),
    Module("mlp.gate_proj", LINEAR, out="ffn", inp="emb"),
    Module("mlp.up_proj", LINEAR, out="ffn", inp="emb"),
    Module("mlp.down_proj", LINEAR, out="emb", inp="ffn"),
    Module("input_layernorm", NORM, out="emb"),
    Module("post_attention_layernorm", NORM, out="emb"),
)


def _kv(c) -> int:
    return getattr(c, "num_key_value_heads", None) or c.num_attention_heads


def resolve_gqa(arch: Arch, small, large) -> Arch:
    """With grouped-query attention in either model, o_proj's input gets its own per-layer width ``attn``."""
    if _kv(small) == small.num_attention_heads and _kv(large) == large.num_attention_heads:
        return arch
    block = tuple(replace(m, inp="attn") if m.path == "self_attn.o_proj" else m for m in arch.layer_modules)
    widths = {**arch.widths, "attn": Width(f"{arch.layers}.{{l}}.fuse_width_attn", per_layer=True)}
    return replace(arch, layer_modules=block, widths=widths)


LLAMA_LM = Arch(
    family="llama",
    model_types=("llama", "mistral", "qwen2"),
    classes=("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"),
    layers="model.layers",
    widths={
        "emb": Width("model.fuse_width_emb"),
        **{w: Width(f"model.layers.{{l}}.fuse_width_{w}", per_layer=True) for w in ("query", "key", "value", "ffn")},
    },
    layer_modules=BLOCK,
    modules=(
        Module("model.embed_tokens", EMBEDDING, out="emb"),
        Module("model.norm", NORM, out="emb"),
        Module("lm_head", LINEAR, out=None, inp="emb"),
    ),
    check_config=check_heads,
    resolve=resolve_gqa,
)
LLAMA_BASE = LLAMA_LM.base_model("model", ("LlamaModel", "MistralModel", "Qwen2Model"))

HEAD_WIDTH = {"head": Width("model.layers.{l}.fuse_width_head", per_layer=True)}
QK_NORMS = (Module("self_attn.q_norm", NORM, out="head"), Module("self_attn.k_norm", NORM, out="head"))
QWEN3_LM = replace(
    LLAMA_LM,
    family="qwen3",
    model_types=("qwen3",),
    classes=("Qwen3ForCausalLM",),
    widths={**LLAMA_LM.widths, **HEAD_WIDTH},
    layer_modules=BLOCK + QK_NORMS,
)
QWEN3_BASE = QWEN3_LM.base_model("model", ("Qwen3Model",))

for _arch in (LLAMA_LM, LLAMA_BASE, QWEN3_LM, QWEN3_BASE):
    register_architecture(_arch)
