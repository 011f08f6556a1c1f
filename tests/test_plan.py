"""The growth planner on its own: :func:`ligo_fast.plan.build_plan` is pure, so these tests call it on hand-written
shape dicts (no model is built) and compare its plan with tables worked out by hand from the paper's operator
(W' = B_out W B_in^T with B = [I; E], depth mixing of the small layers) and the official checkpoint layout.

The cases: a tiny BERT (MLM head, post-norm, biases) and a tiny Llama with grouped-query attention (o_proj gets its
own width ``attn``), 1 -> 2 layers, every width doubling (function-preserving growth is then exact) unless a case says
otherwise.
"""

from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace

import pytest

from ligo_fast.arch import EMBEDDING
from ligo_fast.arch.bert import BERT_MLM
from ligo_fast.arch.llama import LLAMA_LM
from ligo_fast.config import LiGOConfig
from ligo_fast.plan import Plan, Role, Rule, Slot, build_plan

V = 7  # vocabulary: never grows
LOSSLESS = dict(width_init="lossless", depth_init="lossless")


# ---------------------------------------------------------------------------------------------- shape dicts
def llama_shapes(d: int, kv: int, ffn: int, layers: int) -> dict[str, tuple[int, ...]]:
    """A Llama state dict's shapes: hidden ``d`` (q and o are d x d), ``kv`` key/value features (GQA: < d)."""
    block = {
        "self_attn.q_proj.weight": (d, d),
        "self_attn.k_proj.weight": (kv, d),
        "self_attn.v_proj.weight": (kv, d),
        "self_attn.o_proj.weight": (d, d),
        "mlp.gate_proj.weight": (ffn, d),
        "mlp.up_proj.weight": (ffn, d),
        "mlp.down_proj.weight": (d, ffn),
        "input_layernorm.weight": (d,),
        "post_attention_layernorm.weight": (d,),
    }
    out = {"model.embed_tokens.weight": (V, d)}
    out |= {f"model.layers.{l}.{k}": s for l in range(layers) for k, s in block.items()}
    return out | {"model.norm.weight": (d,), "lm_head.weight": (V, d)}


def bert_shapes(d: int, ffn: int, layers: int, positions: int = 9) -> dict[str, tuple[int, ...]]:
    """A BertForMaskedLM state dict's shapes (every linear and LayerNorm with a bias)."""

    def lin(path: str, o: int, i: int) -> dict:
        return {f"{path}.weight": (o, i), f"{path}.bias": (o,)}

    def norm(path: str, n: int) -> dict:
        return {f"{path}.weight": (n,), f"{path}.bias": (n,)}

    block = {
        **lin("attention.self.query", d, d),
        **lin("attention.self.key", d, d),
        **lin("attention.self.value", d, d),
        **lin("attention.output.dense", d, d),
        **norm("attention.output.LayerNorm", d),
        **lin("intermediate.dense", ffn, d),
        **lin("output.dense", d, ffn),
        **norm("output.LayerNorm", d),
    }
    out = {
        "bert.embeddings.word_embeddings.weight": (V, d),
        "bert.embeddings.position_embeddings.weight": (positions, d),
        "bert.embeddings.token_type_embeddings.weight": (2, d),
        **norm("bert.embeddings.LayerNorm", d),
    }
    out |= {f"bert.encoder.layer.{l}.{k}": s for l in range(layers) for k, s in block.items()}
    out |= {**lin("cls.predictions.transform.dense", d, d), **norm("cls.predictions.transform.LayerNorm", d)}
    return out | {"cls.predictions.decoder.weight": (V, d), "cls.predictions.decoder.bias": (V,)}


def gqa_llama():
    """Llama, hidden 8 -> 16 with 2 heads (head size 4 -> 8) and 1 KV head (k/v 4 -> 8), FFN 10 -> 20."""
    small = SimpleNamespace(hidden_size=8, num_attention_heads=2, num_key_value_heads=1)
    large = SimpleNamespace(hidden_size=16, num_attention_heads=2, num_key_value_heads=1)
    return LLAMA_LM.for_configs(small, large), llama_shapes(8, 4, 10, 1), llama_shapes(16, 8, 20, 2)


def tiny_bert():
    return BERT_MLM, bert_shapes(8, 10, 1), bert_shapes(16, 20, 2)


LLAMA_TIE = [("model.embed_tokens.weight", "lm_head.weight")]
BERT_TIE = [("bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight")]


def plan(case, tied_groups=(), **options) -> Plan:
    arch, small, large = case()
    return build_plan(arch, small, large, list(tied_groups), 1, 2, LiGOConfig.official(**options))


def _slot_name(param: str) -> str:
    return param.rpartition(".")[0].replace(".", "__")


def slot(p: Plan, name: str) -> Slot:
    (s,) = [s for s in p.slots if s.name == name]
    return s


# ---------------------------------------------------------------------------------------------- which slots
LLAMA_BLOCK = [
    "self_attn__q_proj", "self_attn__k_proj", "self_attn__v_proj", "self_attn__o_proj", "mlp__gate_proj",
    "mlp__up_proj", "mlp__down_proj", "input_layernorm", "post_attention_layernorm",
]  # fmt: skip
BERT_BLOCK = [
    "attention__self__query", "attention__self__key", "attention__self__value", "attention__output__dense",
    "attention__output__LayerNorm", "intermediate__dense", "output__dense", "output__LayerNorm",
]  # fmt: skip
BERT_GLOBAL = [
    "bert__embeddings__word_embeddings", "bert__embeddings__position_embeddings",
    "bert__embeddings__token_type_embeddings", "bert__embeddings__LayerNorm", "cls__predictions__transform__dense",
    "cls__predictions__transform__LayerNorm", "cls__predictions__decoder",
]  # fmt: skip


@pytest.mark.parametrize(
    "case, tied, names",
    [
        (gqa_llama, (), LLAMA_BLOCK + ["model__embed_tokens", "model__norm", "lm_head"]),
        # a tied head without a bias has nothing to produce: no slot; its weight is an alias of the embedding's
        (gqa_llama, LLAMA_TIE, LLAMA_BLOCK + ["model__embed_tokens", "model__norm"]),
        (tiny_bert, (), BERT_BLOCK + BERT_GLOBAL),
        # BERT's tied decoder keeps its slot for the bias
        (tiny_bert, BERT_TIE, BERT_BLOCK + BERT_GLOBAL),
    ],
    ids=["llama", "llama-tied", "bert", "bert-tied"],
)
def test_the_slots_are_the_modules_in_order_block_ones_first(case, tied, names):
    p = plan(case, tied)
    assert [s.name for s in p.slots] == names
    assert [s.layered for s in p.slots] == [n in LLAMA_BLOCK + BERT_BLOCK for n in names]
    assert (p.L1, p.L2) == (1, 2)


# ---------------------------------------------------------------------------------------------- widths
LLAMA_WIDTHS = {"emb": (8, 16), "query": (8, 16), "key": (4, 8), "value": (4, 8), "attn": (8, 16), "ffn": (10, 20)}
BERT_WIDTHS = {"emb": (8, 16), "query": (8, 16), "key": (8, 16), "value": (8, 16), "ffn": (10, 20), "cls": (8, 16)}


@pytest.mark.parametrize("case, widths", [(gqa_llama, LLAMA_WIDTHS), (tiny_bert, BERT_WIDTHS)], ids=["llama", "bert"])
def test_every_width_has_its_small_and_large_size(case, widths):
    assert plan(case).widths == widths


# slot -> (e_rows, e_cols) with tied width matrices (LiGOConfig.tie, the default): one matrix per width
LLAMA_E = {
    "self_attn__q_proj": (("width__query",), ("width__emb",)),
    "self_attn__k_proj": (("width__key",), ("width__emb",)),
    "self_attn__o_proj": (("width__emb",), ("width__attn",)),  # GQA: o_proj's input is its own width
    "mlp__down_proj": (("width__emb",), ("width__ffn",)),
    "input_layernorm": (("width__emb",), (None,)),
    "model__embed_tokens": ((None,), ("width__emb",)),  # the vocabulary does not grow
    "lm_head": ((None,), ("width__emb",)),
}
BERT_E = {
    "attention__output__dense": (("width__emb",), ("width__value",)),  # no GQA: o's input is the value width
    "cls__predictions__transform__dense": (("width__cls",), ("width__emb",)),
    "cls__predictions__transform__LayerNorm": (("width__cls",), (None,)),
    "cls__predictions__decoder": ((None,), ("width__cls",)),
}


@pytest.mark.parametrize("case, table", [(gqa_llama, LLAMA_E), (tiny_bert, BERT_E)], ids=["llama", "bert"])
def test_each_side_of_each_module_reads_its_widths_matrix(case, table):
    p = plan(case)
    for name, (rows, cols) in table.items():
        s = slot(p, name)
        assert (s.e_rows, s.e_cols) == (rows, cols), name
        assert not s.split_rows
        assert s.bias_widths == ((None,) if s.mod.kind == EMBEDDING else rows), name


def test_untied_widths_give_every_module_side_its_own_matrix_named_after_the_slot():
    p = plan(gqa_llama, tie=False)
    s = slot(p, "self_attn__q_proj")
    assert (s.e_rows, s.e_cols) == (("width__self_attn__q_proj__out",), ("width__self_attn__q_proj__in",))
    e = p.tensor("width__self_attn__q_proj__in")
    assert (e.rule, e.role, e.shape, e.width) == (Rule.SPLIT, Role.WIDTH, (2, 8, 8), "emb")
    assert e.official == "model.layers.{l}.self_attn.q_proj.fuse_width_in.coeffs_weight"
    assert e.name not in {t.name for t in plan(gqa_llama).tensors}
    assert not [t for t in p.tensors if t.name.startswith("width__") and t.name.count("__") == 1]


# ---------------------------------------------------------------------------------------------- tensors
# name -> (rule, role, shape, official key); the official keys are the reference implementation's checkpoint layout
LLAMA_TENSORS = {
    "__sm_model_embed_tokens_weight": (Rule.PLAIN, Role.SMALL, (V, 8), "__sm_model_embed_tokens_weight"),
    "__sm_self_attn_k_proj_weight": (Rule.STACK, Role.SMALL, (1, 4, 8), "__sm_self_attn_k_proj_weight"),
    "width__emb": (Rule.PLAIN, Role.WIDTH, (8, 8), "model.fuse_width_emb.coeffs_weight"),
    "width__key": (Rule.SPLIT, Role.WIDTH, (2, 4, 4), "model.layers.{l}.fuse_width_key.coeffs_weight"),
    "width__attn": (Rule.SPLIT, Role.WIDTH, (2, 8, 8), "model.layers.{l}.fuse_width_attn.coeffs_weight"),
    "width__ffn": (Rule.SPLIT, Role.WIDTH, (2, 10, 10), "model.layers.{l}.fuse_width_ffn.coeffs_weight"),
    "depth__self_attn__k_proj__weight": (
        Rule.SPLIT, Role.DEPTH, (2, 1), "model.layers.{l}.self_attn.k_proj.fuse_depth_coeffs.coeffs_weight",
    ),
    "depth__input_layernorm__weight": (
        Rule.SPLIT, Role.DEPTH, (2, 1), "model.layers.{l}.input_layernorm.fuse_depth_coeffs.coeffs_weight",
    ),
}  # fmt: skip
BERT_TENSORS = {
    "__sm_attention_self_query_bias": (Rule.STACK, Role.SMALL, (1, 8), "__sm_attention_self_query_bias"),
    "width__cls": (Rule.PLAIN, Role.WIDTH, (8, 8), "cls.predictions.fuse_width_cls.coeffs_weight"),
    "width__value": (Rule.SPLIT, Role.WIDTH, (2, 8, 8), "bert.encoder.layer.{l}.fuse_width_value.coeffs_weight"),
    "depth__output__dense__bias": (
        Rule.SPLIT, Role.DEPTH, (2, 1), "bert.encoder.layer.{l}.output.dense.fuse_depth_coeffs.coeffs_bias",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case, table", [(gqa_llama, LLAMA_TENSORS), (tiny_bert, BERT_TENSORS)], ids=["llama", "bert"])
def test_operator_tensors_have_their_rule_role_shape_and_official_key(case, table):
    p = plan(case)
    for name, (rule, role, shape, official) in table.items():
        t = p.tensor(name)
        assert (t.rule, t.role, t.shape, t.official) == (rule, role, shape, official), name
    assert [r for r in p.rules if r[0] == "width__emb"] == [("width__emb", p.tensor("width__emb").official, "plain")]


def test_tensor_order_is_small_tensors_then_shared_widths_then_slot_by_slot():
    """The order of ``tensors`` is the order of the initial random draws: a change would change every seeded run."""
    p = plan(gqa_llama, residual=True)
    names = [t.name for t in p.tensors]
    small = [n for n in names if n.startswith("__sm_")]
    assert names[: len(small)] == small
    assert names[len(small) : len(small) + 6] == [
        f"width__{w}" for w in ("emb", "query", "key", "value", "ffn", "attn")
    ]
    rest = names[len(small) + 6 :]
    assert rest[:3] == [
        "depth__self_attn__q_proj__weight", "residual__self_attn__q_proj__weight", "depth__self_attn__k_proj__weight",
    ]  # fmt: skip
    assert rest[-3:] == [
        "residual__model__embed_tokens__weight",
        "residual__model__norm__weight",
        "residual__lm_head__weight",
    ]


def test_each_block_tensor_is_stacked_from_every_small_layer():
    arch, small, large = gqa_llama()
    small, large = llama_shapes(8, 4, 10, 3), llama_shapes(16, 8, 20, 4)
    p = build_plan(arch, small, large, [], 3, 4, LiGOConfig.official())
    t = p.tensor("__sm_mlp_down_proj_weight")
    assert t.sources == tuple(f"model.layers.{j}.mlp.down_proj.weight" for j in range(3))
    assert t.shape == (3, 8, 10)
    assert p.tensor("depth__mlp__down_proj__weight").shape == (4, 3)
    s = slot(p, "mlp__down_proj")
    assert s.targets_w == tuple(f"model.layers.{l}.mlp.down_proj.weight" for l in range(4))
    assert (s.shape_w, s.view_w) == ((16, 20), (8, 10))


def test_biases_are_produced_where_the_models_have_them():
    p = plan(tiny_bert)
    s = slot(p, "attention__self__query")
    assert (s.b, s.depth_b) == ("__sm_attention_self_query_bias", "depth__attention__self__query__bias")
    assert s.targets_b == (
        "bert.encoder.layer.0.attention.self.query.bias",
        "bert.encoder.layer.1.attention.self.query.bias",
    )
    llama = slot(plan(gqa_llama), "self_attn__q_proj")
    assert (llama.b, llama.depth_b, llama.targets_b) == (None, None, ())


# ---------------------------------------------------------------------------------------------- ties and aliases
@pytest.mark.parametrize("case, tied", [(gqa_llama, LLAMA_TIE), (tiny_bert, BERT_TIE)], ids=["llama", "bert"])
def test_a_tied_head_is_an_alias_of_the_embedding(case, tied):
    emb, head = tied[0]
    untied, p = plan(case), plan(case, tied)
    assert p.aliases == {emb: (head,)}
    assert {emb, head} <= p.removed
    assert not untied.aliases and {emb, head} <= untied.removed
    produced_w = [t for s in p.slots if not s.tied_weight for t in s.targets_w]
    assert emb in produced_w and head not in produced_w
    # without width tying the head has a width matrix of its own, unless its weight is the embedding's
    own = {t.name for t in plan(case, tie=False).tensors} - {t.name for t in plan(case, tied, tie=False).tensors}
    assert own == {f"width__{_slot_name(head)}__in"}


def test_a_tied_head_with_a_bias_produces_only_its_bias():
    s = slot(plan(tiny_bert, BERT_TIE), "cls__predictions__decoder")
    assert s.tied_weight and (s.e_rows, s.e_cols) == ((None,), (None,))
    assert s.targets_b == ("cls.predictions.decoder.bias",)
    assert not slot(plan(tiny_bert), "cls__predictions__decoder").tied_weight


def test_removed_is_exactly_what_the_operator_produces():
    p = plan(gqa_llama)
    arch, small, large = gqa_llama()
    assert p.removed == frozenset(large)  # every parameter of a Llama is produced (its buffers are not listed)
    p = plan(gqa_llama, residual=True, tie=False)
    assert p.removed == frozenset(large)


def test_residuals_cover_every_produced_tensor_at_its_large_shape():
    p = plan(tiny_bert, BERT_TIE, residual=True)
    t = p.tensor("residual__attention__self__query__weight")
    assert (t.rule, t.role, t.shape, t.trainable) == (Rule.SPLIT, Role.RESIDUAL, (2, 16, 16), True)
    assert t.official == "bert.encoder.layer.{l}.attention.self.query.residual_weight"
    dec = slot(p, "cls__predictions__decoder")
    assert (dec.res_w, dec.res_b) == (None, "residual__cls__predictions__decoder__bias")  # the tied weight has none
    assert p.tensor(dec.res_b).shape == (V,)


# ---------------------------------------------------------------------------------------------- lossless scales
def test_lossless_depth_scales_divide_by_the_input_widths_growth():
    p = plan(gqa_llama, **LOSSLESS)
    for name, scale, block_output in [
        ("depth__self_attn__q_proj__weight", 0.5, False),  # input emb 8 -> 16
        ("depth__self_attn__o_proj__weight", 0.5, True),  # input attn 8 -> 16, writes into the residual stream
        ("depth__mlp__down_proj__weight", 0.5, True),  # input ffn 10 -> 20
        ("depth__input_layernorm__weight", 1.0, False),  # a norm has no input width
    ]:
        t = p.tensor(name)
        assert (t.scale, t.block_output) == (scale, block_output), name
    assert plan(gqa_llama).tensor("depth__self_attn__q_proj__weight").scale == 1.0
    assert p.notes == ()


def test_lossless_growth_of_an_untied_head_scales_it_and_of_a_tied_head_scales_the_norm_before_it():
    head = slot(plan(gqa_llama, **LOSSLESS), "lm_head")
    assert head.scale_w == "scale__lm_head__weight"
    assert plan(gqa_llama, **LOSSLESS).tensor(head.scale_w).scale == 0.5
    tied = plan(gqa_llama, LLAMA_TIE, **LOSSLESS)
    norm = slot(tied, "model__norm")
    assert (norm.scale_w, norm.scale_b) == ("scale__model__norm__weight", None)  # an RMSNorm has no bias
    t = tied.tensor(norm.scale_w)
    assert (t.rule, t.role, t.shape, t.scale, t.trainable) == (Rule.PLAIN, Role.SCALE, (1, 1), 0.5, False)
    assert t.official == "model.norm.fuse_scale.coeffs_weight"
    bert_norm = slot(plan(tiny_bert, BERT_TIE, **LOSSLESS), "cls__predictions__transform__LayerNorm")
    assert bert_norm.scale_b == "scale__cls__predictions__transform__LayerNorm__bias"  # the LayerNorm's bias too
    assert slot(plan(gqa_llama, LLAMA_TIE), "model__norm").scale_w is None  # only function-preserving growth


def test_lossless_scales_of_a_scaled_embedding_and_of_the_norm_before_its_tied_head():
    """An embedding the model multiplies by output_scale(width) (Gemma: sqrt) gets the inverse of that factor's
    change; the head tied to it reads B_emb^T times that scale, whose inverse goes into the norm before it."""
    arch, small, large = gqa_llama()
    emb = replace(arch.modules[0], output_scale=math.sqrt)
    arch = replace(arch, modules=(emb, *arch.modules[1:]))
    p = build_plan(arch, small, large, LLAMA_TIE, 1, 2, LiGOConfig(**LOSSLESS))
    emb_scale = math.sqrt(8) / math.sqrt(16)
    assert p.tensor(slot(p, "model__embed_tokens").scale_w).scale == pytest.approx(emb_scale)
    assert p.tensor(slot(p, "model__norm").scale_w).scale == pytest.approx(1 / (2 * emb_scale))
    untied = build_plan(arch, small, large, [], 1, 2, LiGOConfig(**LOSSLESS))
    assert untied.tensor(slot(untied, "model__embed_tokens").scale_w).scale == pytest.approx(emb_scale)
    assert slot(untied, "model__norm").scale_w is None
    assert untied.tensor(slot(untied, "lm_head").scale_w).scale == 0.5


def test_an_uneven_width_growth_is_noted():
    arch, small, _ = gqa_llama()
    p = build_plan(arch, small, llama_shapes(16, 8, 15, 2), [], 1, 2, LiGOConfig(**LOSSLESS))
    assert p.notes == (
        "width 'ffn' grows 10 -> 15, not by an integer factor: neurons are copied unevenly, so norms and the input "
        "split are not exact",
    )
    assert build_plan(arch, small, llama_shapes(16, 8, 15, 2), [], 1, 2, LiGOConfig.official()).notes == ()


# ---------------------------------------------------------------------------------------------- refusals
def _without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s, l: (s, {**l, "model.layers.0.mlp.up_proj.weight": (24, 16)}), "width 'ffn' is (10, 20) at"),
        (lambda s, l: (s, {**l, "model.layers.0.mlp.gate_proj.weight": (6, 16)}), "width 'ffn' shrinks"),
        (lambda s, l: (s, {**l, "model.embed_tokens.weight": (V + 1, 16)}), "but that axis does not grow"),
        (lambda s, l: (s, _without(l, "model.norm.weight")), "the large model has no tensor 'model.norm.weight'"),
        (lambda s, l: (s, {**l, "model.layers.0.self_attn.q_proj.bias": (16,)}), "exists in the large model but not"),
    ],
    ids=["widths-disagree", "width-shrinks", "vocabulary-grows", "missing-module", "bias-in-one"],
)
def test_inconsistent_shapes_are_refused_with_the_tensor_named(edit, message):
    arch, small, large = gqa_llama()
    small, large = edit(small, large)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_plan(arch, small, large, [], 1, 2, LiGOConfig())


def test_fewer_large_layers_are_refused():
    arch, small, large = gqa_llama()
    with pytest.raises(ValueError, match="the layer count shrinks"):
        build_plan(arch, small, large, [], 2, 1, LiGOConfig())
