"""GPT-2, as data.

GPT-2 stores its projections as ``Conv1D`` weights of shape (in, out) (``transposed=True``), and fuses
query, key and value in one ``c_attn`` of shape (in, 3 * width): its output side is three parts, each growing
with its own per-layer width (``query``, ``key``, ``value``), produced part by part and written side by side.
Otherwise the BERT tying: ``emb`` is the residual stream (token and position embeddings, both LayerNorms of
each block, the input of c_attn and c_fc, the output of both c_proj, the final LayerNorm, the head's input);
``value`` is also the input of attn.c_proj; ``ffn`` the output of c_fc and the input of mlp.c_proj. GPT-2 ties
``lm_head`` to the token embedding by default: it is produced once and stays tied.
"""

from __future__ import annotations

from .base import EMBEDDING, LINEAR, NORM, Arch, Module, Width, check_heads, register_architecture

GPT2_LM = Arch(
    family="gpt2",
    model_types=("gpt2",),
    classes=("GPT2LMHeadModel",),
    layers="transformer.h",
    widths={
        "emb": Width("transformer.fuse_width_emb"),
        **{w: Width(f"transformer.h.{{l}}.fuse_width_{w}", per_layer=True) for w in ("query", "key", "value", "ffn")},
    },
    layer_modules=(
        Module("ln_1", NORM, out="emb"),
        Module("attn.c_attn", LINEAR, out=("query", "key", "value"), inp="emb", transposed=True),
        Module("attn.c_proj", LINEAR, out="emb", inp="value", transposed=True),
        Module("ln_2", NORM, out="emb"),
        Module("mlp.c_fc", LINEAR, out="ffn", inp="emb", transposed=True),
        Module("mlp.c_proj", LINEAR, out="emb", inp="ffn", transposed=True),
    ),
    modules=(
        Module("transformer.wte", EMBEDDING, out="emb"),
        Module("transformer.wpe", EMBEDDING, out="emb"),
        Module("transformer.ln_f", NORM, out="emb"),
        Module("lm_head", LINEAR, out=None, inp="emb"),
    ),
    check_config=check_heads,
)
GPT2_BASE = GPT2_LM.base_model("transformer", ("GPT2Model",))

for _arch in (GPT2_LM, GPT2_BASE):
    register_architecture(_arch)
