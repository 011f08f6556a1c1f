"""BERT and RoBERTa (the official LiGO coverage), as data.

Tying, exactly as the official code (``fuse_tie_param``):
  * ``emb``: embeddings' feature columns, the embedding LayerNorm, the input side of Q/K/V and FFN-in, the
    output side of attention-output and FFN-out and both LayerNorms of every block, and the input of the
    head's transform dense;
  * per large layer: ``query``, ``key``, ``value`` (value also on the input side of attention-output) and
    ``ffn`` (output of FFN-in, input of FFN-out);
  * ``cls``: output of the head's transform dense and its LayerNorm, input of the decoder. The vocabulary
    (decoder output) never grows.
"""

from __future__ import annotations

from .base import EMBEDDING, LINEAR, NORM, Arch, Module, Width, register_architecture

BLOCK = (
    Module("attention.self.query", LINEAR, out="query", inp="emb"),
    Module("attention.self.key", LINEAR, out="key", inp="emb"),
    Module("attention.self.value", LINEAR, out="value", inp="emb"),
    Module("attention.output.dense", LINEAR, out="emb", inp="value"),
    Module("attention.output.LayerNorm", NORM, out="emb"),
    Module("intermediate.dense", LINEAR, out="ffn", inp="emb"),
    Module("output.dense", LINEAR, out="emb", inp="ffn"),
    Module("output.LayerNorm", NORM, out="emb"),
)


def _check_heads(small, large) -> None:
    for c, which in ((small, "small"), (large, "large")):
        if c.hidden_size % c.num_attention_heads:
            raise ValueError(
                f"{which} config: num_attention_heads={c.num_attention_heads} does not divide "
                f"hidden_size={c.hidden_size}"
            )


def _bert_like(base: str, model_types: tuple[str, ...], classes: tuple[str, ...], head: tuple[Module, ...], cls_key):
    widths = {
        "emb": Width(f"{base}.embeddings.fuse_width_emb"),
        **{
            w: Width(f"{base}.encoder.layer.{{l}}.fuse_width_{w}", per_layer=True)
            for w in ("query", "key", "value", "ffn")
        },
    }
    if cls_key:
        widths["cls"] = Width(cls_key)
    emb = tuple(
        Module(f"{base}.embeddings.{name}", EMBEDDING, out="emb", bias=False)
        for name in ("word_embeddings", "position_embeddings", "token_type_embeddings")
    ) + (Module(f"{base}.embeddings.LayerNorm", NORM, out="emb"),)
    return Arch(
        family=base,
        model_types=model_types,
        classes=classes,
        layers=f"{base}.encoder.layer",
        widths=widths,
        layer_modules=BLOCK,
        modules=emb + head,
        check_config=_check_heads,
    )


BERT_MLM = _bert_like(
    "bert",
    ("bert",),
    ("BertForMaskedLM",),
    head=(
        Module("cls.predictions.transform.dense", LINEAR, out="cls", inp="emb"),
        Module("cls.predictions.transform.LayerNorm", NORM, out="cls"),
        Module("cls.predictions.decoder", LINEAR, out=None, inp="cls"),
    ),
    cls_key="cls.predictions.fuse_width_cls",
)

ROBERTA_MLM = _bert_like(
    "roberta",
    ("roberta",),
    ("RobertaForMaskedLM",),
    head=(
        Module("lm_head.dense", LINEAR, out="cls", inp="emb"),
        Module("lm_head.layer_norm", NORM, out="cls"),
        Module("lm_head.decoder", LINEAR, out=None, inp="cls"),
    ),
    cls_key="lm_head.fuse_width_cls",
)

for _arch in (BERT_MLM, ROBERTA_MLM):
    register_architecture(_arch)
