"""The prepared growth (:mod:`ligo_fast.spec`): the plan is built once, from a layout that is the full model's."""

import pytest
import torch
import transformers as T
from _models import build, configs, inputs, main_output

import ligo_fast
from ligo_fast import plan as plan_module
from ligo_fast import spec
from ligo_fast.hf import empty_parameters

FAMILIES = [
    ("BertForMaskedLM", False),
    ("BertForMaskedLM", True),
    ("GPT2LMHeadModel", True),
    ("LlamaForCausalLM", True),
    ("Qwen3ForCausalLM", False),
    ("Gemma3ForCausalLM", True),
    ("ViTForImageClassification", False),
]


def _count_plans(monkeypatch) -> list:
    """Every build_plan call, however it was imported, runs plan.small_tensors once: count those."""
    calls = []
    real = plan_module.small_tensors
    monkeypatch.setattr(plan_module, "small_tensors", lambda pair: calls.append(pair) or real(pair))
    return calls


def test_growth_builds_its_plan_once(monkeypatch):
    calls = _count_plans(monkeypatch)
    small_cfg, large_cfg = configs("LlamaForCausalLM", tie=True)
    model = ligo_fast.grow(build("LlamaForCausalLM", small_cfg), large_cfg)
    assert len(calls) == 1
    assert model.plan.aliases  # the one plan knows the tied head (the large model is built after it)


def test_plan_growth_builds_one_plan_and_no_large_model(monkeypatch):
    calls = _count_plans(monkeypatch)
    monkeypatch.setattr(spec, "empty_parameters", lambda: 1 / 0)  # the full large model is never built
    small_cfg, large_cfg = configs("LlamaForCausalLM")
    with torch.device("meta"):
        small = T.LlamaForCausalLM(small_cfg)
    ligo_fast.plan_growth(small, large_cfg, tokens=14, seq_len=7)
    assert len(calls) == 1


@pytest.mark.parametrize(("name", "tie"), FAMILIES)
def test_the_one_layer_layout_is_the_full_models(name, tie):
    """The shapes (in state-dict order) and ties the plan is built from, taken from a one-layer model on meta, are
    those of the full large model, so the plan equals the one built from the full model."""
    small_cfg, large_cfg = configs(name, tie=tie)
    small = build(name, small_cfg)
    pair = spec.resolve(small, large_cfg)
    shapes, ties = spec.large_layout(pair)
    with empty_parameters():
        full = getattr(T, name)(large_cfg)
    assert list(shapes.items()) == [(k, tuple(v.shape)) for k, v in full.state_dict().items()]
    assert ties == spec.tied_groups(full)
    assert any(len(g) > 1 for g in ties) == (tie and name != "ViTForImageClassification")
    cfg = ligo_fast.LiGOConfig()
    full_shapes = {k: tuple(v.shape) for k, v in full.state_dict().items()}
    assert spec.plan_for(pair, cfg) == spec.plan_for(pair, cfg, (full_shapes, spec.tied_groups(full)))


def test_a_layout_that_is_not_the_models_is_refused():
    small_cfg, large_cfg = configs("LlamaForCausalLM")
    pair = spec.resolve(build("LlamaForCausalLM", small_cfg), large_cfg)
    shapes, ties = spec.large_layout(pair)
    plan = spec.plan_for(pair, ligo_fast.LiGOConfig(), (shapes, ties))
    wrong = dict(shapes, **{"model.layers.2.mlp.up_proj.weight": (1, 1)})
    with pytest.raises(RuntimeError, match="layers are alike"):
        spec.skeleton(pair, plan, (wrong, ties))
    assert "model.layers.2.mlp.up_proj.weight" not in dict(spec.skeleton(pair, plan, (shapes, ties)).named_parameters())


def test_the_spec_holds_what_the_model_registers():
    small_cfg, large_cfg = configs("GPT2LMHeadModel", tie=True)
    small = build("GPT2LMHeadModel", small_cfg)
    before = {k: v.clone() for k, v in small.state_dict().items()}
    cfg = ligo_fast.LiGOConfig(seed=3, depth_init="rand", width_init="rand")
    prepared = spec.GrowthSpec.prepare(small, large_cfg, cfg)
    assert list(prepared.initial) == [t.name for t in prepared.plan.tensors]
    assert not any(p.requires_grad or p.device.type == "meta" for p in prepared.large.parameters())
    assert not set(dict(prepared.large.named_parameters(remove_duplicate=False))) & prepared.plan.removed
    model = ligo_fast.LiGOModel(small, large_cfg, cfg).eval()
    for name, t in prepared.initial.items():  # the same draws, registered as they are
        assert torch.equal(getattr(model.op, name), t)
    assert all(torch.equal(before[k], v) for k, v in small.state_dict().items())
    x = inputs("GPT2LMHeadModel")
    with torch.no_grad():
        torch.testing.assert_close(main_output(model(**x)), main_output(ligo_fast.materialize(model)(**x)))
