"""ViT, as data.

The BERT tying on a vision encoder: ``emb`` is the residual stream (the patch projection's output channels,
the class token, the position embeddings' features, both LayerNorms of each block, the final LayerNorm,
the input of the pooler and the classifier); per large layer ``query``, ``key``, ``value`` (value also the
input of the attention output) and ``ffn``. The patch projection (a Conv2d, weight (width, C, p, p)) grows on
its output channels only; the patch grid (image and patch size) must not change. The pooler has its own
width ``pool``; the labels never grow.
"""

from __future__ import annotations

from .base import EMBEDDING, LINEAR, NORM, Arch, Module, Width, check_heads, register_architecture

VIT_CLS = Arch(
    family="vit",
    model_types=("vit",),
    classes=("ViTForImageClassification",),
    layers="vit.layers",
    widths={
        "emb": Width("vit.embeddings.fuse_width_emb"),
        "pool": Width("vit.pooler.fuse_width_pool"),
        **{w: Width(f"vit.layers.{{l}}.fuse_width_{w}", per_layer=True) for w in ("query", "key", "value", "ffn")},
    },
    layer_modules=(
        Module("attention.q_proj", LINEAR, out="query", inp="emb"),
        Module("attention.k_proj", LINEAR, out="key", inp="emb"),
        Module("attention.v_proj", LINEAR, out="value", inp="emb"),
        Module("attention.o_proj", LINEAR, out="emb", inp="value"),
        Module("layernorm_before", NORM, out="emb"),
        Module("layernorm_after", NORM, out="emb"),
        Module("mlp.fc1", LINEAR, out="ffn", inp="emb"),
        Module("mlp.fc2", LINEAR, out="emb", inp="ffn"),
    ),
    modules=(
        Module("vit.embeddings", EMBEDDING, out="emb", weight="cls_token", bias=None),
        Module("vit.embeddings", EMBEDDING, out="emb", weight="position_embeddings", bias=None),
        Module("vit.embeddings.patch_embeddings.projection", LINEAR, out="emb", inp=None),
        Module("vit.layernorm", NORM, out="emb"),
        Module("vit.pooler.dense", LINEAR, out="pool", inp="emb"),
        Module("classifier", LINEAR, out=None, inp="emb"),
    ),
    check_config=check_heads,
)
VIT_BASE = VIT_CLS.base_model("vit", ("ViTModel",))

for _arch in (VIT_CLS, VIT_BASE):
    register_architecture(_arch)
