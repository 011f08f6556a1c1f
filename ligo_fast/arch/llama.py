"""Llama-family decoders (Llama, Mistral, Qwen2: one layout), as data.

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


def _resolve(arch: Arch, small, large) -> Arch:
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
    resolve=_resolve,
)
LLAMA_BASE = LLAMA_LM.base_model("model", ("LlamaModel", "MistralModel", "Qwen2Model"))

for _arch in (LLAMA_LM, LLAMA_BASE):
    register_architecture(_arch)
