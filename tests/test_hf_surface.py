"""What HF tooling reads from a LiGOModel: the large model's signature, config-level attributes, parameter counts,
repr, activation checkpointing (same loss and operator gradients, the recompute really runs), save_pretrained."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from _models import build, configs, inputs

import ligo_fast
from ligo_fast import LiGOModel
from ligo_fast.hf_surface import HFSurface
from ligo_fast.integrations import GrowingModel, from_pretrained


def _grown(name: str, **kw):
    small_cfg, large_cfg = configs(name)
    return ligo_fast.grow(build(name, small_cfg), large_cfg, seed=0, **kw)


@pytest.mark.parametrize(
    "name, main_input, generates",
    [
        ("LlamaForCausalLM", "input_ids", True),
        ("BertForMaskedLM", "input_ids", False),
        ("ViTModel", "pixel_values", False),
    ],
)
def test_signature_and_attributes_are_the_large_models(name, main_input, generates):
    model = _grown(name).eval()
    expected = list(inspect.signature(type(model.large).forward).parameters)[1:]  # bound: without self
    assert list(inspect.signature(model.forward).parameters) == expected
    assert main_input in expected and "args" not in expected
    assert model.main_input_name == main_input and model.can_generate() is generates
    assert model.supports_gradient_checkpointing
    x = inputs(name)
    with torch.no_grad():  # the signed forward is the class's forward
        a, b = model(**x), type(model).forward(model, **x)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)


def test_copies_call_their_own_forward():
    model = _grown("LlamaForCausalLM")
    for other in (copy.copy(model), copy.deepcopy(model)):
        assert other.forward.__self__ is other
        assert inspect.signature(other.forward) == inspect.signature(model.forward)


@pytest.mark.parametrize("name", ["LlamaForCausalLM", "GPT2LMHeadModel"])
def test_num_parameters_and_repr_match_the_materialised_model(name):
    model = _grown(name)
    big = model.materialize()
    for exclude in (False, True):
        assert model.num_parameters(exclude_embeddings=exclude) == big.num_parameters(exclude_embeddings=exclude)
    assert model.num_parameters(only_trainable=True) == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert model.num_parameters() > model.num_parameters(only_trainable=True)
    text = repr(model)
    assert "(large): " + repr(big).replace("\n", "\n  ") in text
    assert not any(
        name.rpartition(".")[2] in model.large.get_submodule(name.rpartition(".")[0]).__dict__
        for name in model.plan.removed
    )  # the stand-ins are gone again


def _step(model, x):
    model.zero_grad(set_to_none=True)
    loss = model(**x, labels=x["input_ids"]).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    "options, ckpt",
    [
        ({"linear_mode": "materialize"}, None),
        ({"lean": True}, None),
        ({"linear_mode": "factored"}, None),
        ({"linear_mode": "materialize"}, {"use_reentrant": True}),
        ({"lean": True, "linear_mode": "materialize"}, {"use_reentrant": True}),
    ],
    ids=["eager", "lean", "factored", "reentrant", "lean-reentrant"],
)
def test_activation_checkpointing_gives_the_same_loss_and_operator_gradients(options, ckpt, monkeypatch):
    model = _grown("LlamaForCausalLM", depth_init="rand", **options).train()
    x = inputs("LlamaForCausalLM", batch=3, seq=5)
    calls = []
    mlp = model.large.model.layers[1].mlp  # count its forward calls (module hooks do not run in the recompute)
    real = type(mlp).forward

    def counting(self, *a, **k):
        calls.extend([1] if self is mlp else [])
        return real(self, *a, **k)

    monkeypatch.setattr(type(mlp), "forward", counting)
    ref_loss, ref = _step(model, x)
    assert len(calls) == 1 and not model.is_gradient_checkpointing
    model.gradient_checkpointing_enable(ckpt)
    loss, grads = _step(model, x)
    assert len(calls) == 3, "the checkpointed block runs again in backward"
    assert model.is_gradient_checkpointing
    assert loss == ref_loss and grads.keys() == ref.keys() and len(ref) > 10
    for k in ref:
        torch.testing.assert_close(grads[k], ref[k], rtol=1e-5, atol=1e-7, msg=lambda m, k=k: f"{k}: {m}")
    model.gradient_checkpointing_disable()
    _step(model, x)
    assert len(calls) == 4 and not model.is_gradient_checkpointing


def test_save_pretrained_and_from_pretrained(tmp_path):
    small_cfg, large_cfg = configs("LlamaForCausalLM")
    small = build("LlamaForCausalLM", small_cfg)
    model = ligo_fast.grow(small, large_cfg, seed=0, depth_init="rand")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # away from the initial draws
    model.save_pretrained(tmp_path / "op")
    model.save_pretrained(tmp_path / "not_main", is_main_process=False)
    assert sorted(p.name for p in (tmp_path / "op").iterdir()) == ["ligo_config.json", "operator.safetensors"]
    assert not (tmp_path / "not_main").exists()
    small.save_pretrained(tmp_path / "small")
    ref = model.state_dict()
    for source in (small, str(tmp_path / "small")):
        loaded = from_pretrained(tmp_path / "op", source)
        got = loaded.state_dict()
        assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)
    (tmp_path / "bare").mkdir()
    (tmp_path / "op" / "operator.safetensors").rename(tmp_path / "bare" / "operator.safetensors")
    with pytest.raises(ValueError, match="naming the small model's class"):
        from_pretrained(tmp_path / "bare", str(tmp_path / "small"))


def test_reentrant_checkpointing_refuses_factored_layers():
    model = _grown("LlamaForCausalLM", linear_mode="factored")
    with pytest.raises(ValueError, match="use_reentrant=False"):
        model.gradient_checkpointing_enable({"use_reentrant": True})


def test_reentrant_checkpointing_runs_auto_mode_materialised():
    """The default ``auto`` picks factored layers for a short batch; under reentrant checkpointing (whose recompute
    cannot see them) it materialises every layer, with the same loss and gradients up to rounding."""
    model = _grown("LlamaForCausalLM", depth_init="rand").train()
    x = inputs("LlamaForCausalLM", batch=1, seq=3)
    assert model.factored_plan((), x), "auto picks factored layers here (else this test checks nothing)"
    ref_loss, ref = _step(model, x)
    model.gradient_checkpointing_enable({"use_reentrant": True})
    assert not model.factored_plan((), x)
    loss, grads = _step(model, x)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for k in ref:
        torch.testing.assert_close(grads[k], ref[k], rtol=1e-4, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    model.gradient_checkpointing_disable()
    assert model.factored_plan((), x), "disabling restores the cost model's choice"


def test_state_dict_entries_do_not_share_memory():
    """Savers that keep one tensor per storage (accelerate's safetensors path) must not lose per-layer entries."""
    for name in ("LlamaForCausalLM", "BertForMaskedLM"):
        sd = _grown(name, tie=False).state_dict()
        storages = [v.untyped_storage().data_ptr() for v in sd.values()]
        assert len(set(storages)) == len(storages), name


# names HF tooling reads, written once in hf_surface.HFSurface (the classes override only what they answer otherwise)
_SHARED = {
    LiGOModel: ["config", "main_input_name", "supports_gradient_checkpointing", "can_generate",
                "gradient_checkpointing_enable", "gradient_checkpointing_disable", "is_activation_checkpointing",
                "is_gradient_checkpointing", "_keys_to_ignore_on_save", "__setstate__"],
    GrowingModel: ["config", "main_input_name", "supports_gradient_checkpointing", "can_generate", "generate",
                   "num_parameters", "gradient_checkpointing_enable", "gradient_checkpointing_disable",
                   "is_gradient_checkpointing", "save_pretrained", "_keys_to_ignore_on_save", "__setstate__"],
}  # fmt: skip


@pytest.mark.parametrize("cls", list(_SHARED))
def test_the_surface_is_written_once(cls):
    for name in _SHARED[cls]:
        assert getattr(cls, name) is getattr(HFSurface, name), f"{cls.__name__}.{name} is written a second time"


def _surface(m) -> tuple:
    return (
        m.config.to_dict(), m.main_input_name, m.supports_gradient_checkpointing, m.can_generate(),
        m.num_parameters(), m.num_parameters(exclude_embeddings=True), m.num_parameters(only_trainable=True),
        list(inspect.signature(m.forward).parameters), m.is_activation_checkpointing, m._keys_to_ignore_on_save,
    )  # fmt: skip


def test_growing_model_answers_as_the_model_it_trains():
    name = "LlamaForCausalLM"
    model = _grown(name, depth_init="rand", width_init="rand").eval()
    wrapper = GrowingModel(model).eval()
    assert _surface(wrapper) == _surface(model)
    ids = inputs(name)["input_ids"][:1, :3]
    torch.testing.assert_close(
        wrapper.generate(ids, max_new_tokens=2, do_sample=False), model.generate(ids, max_new_tokens=2, do_sample=False)
    )
    wrapper.gradient_checkpointing_enable()
    assert wrapper.is_gradient_checkpointing and model.is_gradient_checkpointing
    wrapper.gradient_checkpointing_disable()
    assert not wrapper.is_gradient_checkpointing and not model.is_activation_checkpointing
    twin = copy.copy(wrapper)  # a copy calls its own forward, with the large model's signature
    assert twin.forward.__self__ is twin and _surface(twin) == _surface(model)
    big = wrapper.grow().eval()
    assert _surface(wrapper)[:6] == _surface(big)[:6] and wrapper.num_parameters() == model.num_parameters()
    assert list(inspect.signature(wrapper.forward).parameters) == list(inspect.signature(big.forward).parameters)
