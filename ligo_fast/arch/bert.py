"""BERT and RoBERTa, as data.

Tying, exactly as the official code (``fuse_tie_param``):
  * ``emb``: embeddings' feature columns, the embedding LayerNorm, the input side of Q/K/V and FFN-in, the
    output side of attention-output and FFN-out and both LayerNorms of every block, and the input of the
    head's transform dense;
  * per large layer: ``query``, ``key``, ``value`` (value also on the input side of attention-output) and
    ``ffn`` (output of FFN-in, input of FFN-out);
  * ``cls``: output of the MLM head's transform dense and its LayerNorm, input of the decoder. The vocabulary
    (decoder output) never grows.
Beyond the official coverage: the pooler (``BertModel``, sequence classification) has its own width ``pool``
(output of the pooler dense, input of the classifier); the classifier's labels never grow.
"""

from __future__ import annotations

from .base import EMBEDDING, LINEAR, NORM, Arch, Module, Width, check_heads, register_architecture

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


def _family(base: str, head: tuple[Module, ...], classes: tuple[str, ...], cls_key: str | None = None) -> Arch:
    """BERT-like layout under ``base`` with the given head; ``cls_key`` names the MLM head's width, if any."""
    uses_pool = any(m.out == "pool" or m.inp == "pool" for m in head)
    widths = {
        "emb": Width(f"{base}.embeddings.fuse_width_emb"),
        **({"cls": Width(cls_key)} if cls_key else {}),
        **({"pool": Width(f"{base}.pooler.fuse_width_pool")} if uses_pool else {}),
        **{
            w: Width(f"{base}.encoder.layer.{{l}}.fuse_width_{w}", per_layer=True)
            for w in ("query", "key", "value", "ffn")
        },
    }
    emb = tuple(
        Module(f"{base}.embeddings.{name}", EMBEDDING, out="emb")
        for name in ("word_embeddings", "position_embeddings", "token_type_embeddings")
    ) + (Module(f"{base}.embeddings.LayerNorm", NORM, out="emb"),)
    return Arch(
        family=base,
        model_types=(base,),
        classes=classes,
        layers=f"{base}.encoder.layer",
        widths=widths,
        layer_modules=BLOCK,
        modules=emb + head,
        check_config=check_heads,
        pre_norm=False,
    )


def _pooler(base: str) -> Module:
    return Module(f"{base}.pooler.dense", LINEAR, out="pool", inp="emb")


BERT_MLM = _family(
    "bert",
    (
        Module("cls.predictions.transform.dense", LINEAR, out="cls", inp="emb"),
        Module("cls.predictions.transform.LayerNorm", NORM, out="cls"),
        Module("cls.predictions.decoder", LINEAR, out=None, inp="cls"),
    ),
    ("BertForMaskedLM",),
    "cls.predictions.fuse_width_cls",
)
ROBERTA_MLM = _family(
    "roberta",
    (
        Module("lm_head.dense", LINEAR, out="cls", inp="emb"),
        Module("lm_head.layer_norm", NORM, out="cls"),
        Module("lm_head.decoder", LINEAR, out=None, inp="cls"),
    ),
    ("RobertaForMaskedLM",),
    "lm_head.fuse_width_cls",
)
# sequence classification: pooler (BERT) + classifier
BERT_SEQCLS = _family(
    "bert", (_pooler("bert"), Module("classifier", LINEAR, out=None, inp="pool")), ("BertForSequenceClassification",)
)
# base models (no head), with their pooler when they have one (add_pooling_layer=True is HF's default)
BERT_BASE = _family("bert", (_pooler("bert"),), ()).base_model("bert", ("BertModel",))
ROBERTA_BASE = _family("roberta", (_pooler("roberta"),), ()).base_model("roberta", ("RobertaModel",))

for _arch in (BERT_MLM, ROBERTA_MLM, BERT_SEQCLS, BERT_BASE, ROBERTA_BASE):
    register_architecture(_arch)
