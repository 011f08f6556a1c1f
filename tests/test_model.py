"""LiGOModel behaviour: what trains, what never changes, what materialize returns."""

import pytest
import torch
from _models import build, configs, inputs, main_output

import ligo_fast

NAME = "BertForMaskedLM"


@pytest.fixture
def small():
    return build(NAME, configs(NAME)[0])


def _snapshot(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}, {
        n: p.requires_grad for n, p in m.named_parameters()
    }


def _step(model, opt):
    out = model(**inputs(NAME), labels=inputs(NAME)["input_ids"])
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    return out.loss.item()


def test_gradients_reach_only_the_operator(small):
    model = ligo_fast.grow(small, configs(NAME)[1], depth_init="rand")
    model(**inputs(NAME), labels=inputs(NAME)["input_ids"]).loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("op.width__") or n.startswith("op.depth__") for n in trainable)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if p.requires_grad)
    assert not any(n.startswith("op.__sm_") for n, _ in model.named_parameters())
    assert all(p.grad is None for p in small.parameters())


def test_train_flags(small):
    large = configs(NAME)[1]
    frozen = ligo_fast.grow(small, large, train_depth=False, train_width=False, residual=True)
    names = {n for n, p in frozen.named_parameters() if p.requires_grad}
    assert names and all(n.startswith("op.residual__") for n in names)
    tuned = ligo_fast.grow(small, large, train_small=True)
    tuned(**inputs(NAME), labels=inputs(NAME)["input_ids"]).loss.backward()
    sm = {n: p for n, p in tuned.named_parameters() if n.startswith("op.__sm_")}
    assert sm and any(p.grad is not None and p.grad.abs().sum() > 0 for p in sm.values())
    assert all(p.grad is None for p in small.parameters())


def test_small_model_is_bit_identical_after_growing_and_training(small):
    before, flags = _snapshot(small)
    model = ligo_fast.grow(small, configs(NAME)[1], train_small=True, residual=True)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    losses = [_step(model, opt) for _ in range(3)]
    assert losses[-1] != losses[0]
    after, flags_after = _snapshot(small)
    assert flags == flags_after
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_training_the_operator_lowers_the_loss(small):
    model = ligo_fast.grow(small, configs(NAME)[1], depth_init="rand")
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    losses = [_step(model, opt) for _ in range(8)]
    assert losses[-1] < losses[0]


def test_materialize_is_a_plain_independent_copy(small):
    model = ligo_fast.grow(small, configs(NAME)[1], residual=True).eval()
    big = ligo_fast.materialize(model)
    assert type(big) is type(small) and big.config.hidden_size == 48 and not big.training
    assert not any("fuse" in k or "__sm_" in k for k in big.state_dict())
    x = inputs(NAME)
    with torch.no_grad():
        ref = main_output(model(**x))
        torch.testing.assert_close(main_output(big(**x)), ref, rtol=0, atol=1e-5)
        ours = {t.data_ptr() for t in model.state_dict().values()}
        assert not any(p.data_ptr() in ours for p in big.parameters())
        for p in big.parameters():
            p.add_(1.0)
        torch.testing.assert_close(main_output(model(**x)), ref, rtol=0, atol=0)
    assert model.materialize().training is False
    assert ligo_fast.materialize(model.train()).training is True


def test_config_and_hf_surface(small):
    cfg = ligo_fast.LiGOConfig(width_init="sel")
    model = ligo_fast.grow(small, configs(NAME)[1], cfg, depth_init="stackbert")
    assert model.ligo_config.width_init == "sel" and model.ligo_config.depth_init == "stackbert"
    assert cfg.depth_init == "lossless"  # the caller's config is not modified
    assert model.config.hidden_size == 48 and model.device.type == "cpu"
    out = model(**inputs(NAME), return_dict=False)
    assert isinstance(out, tuple)


def test_one_expand_call_per_module_kind(small, monkeypatch):
    from ligo_fast import ops

    calls = {"expand": 0, "multi": 0}
    real_expand, real_multi = ops.ligo_expand, ops.ligo_expand_vec_multi

    def count(name, fn):
        def wrapped(*a, **k):
            calls[name] += 1
            return fn(*a, **k)

        return wrapped

    monkeypatch.setattr(ops, "ligo_expand", count("expand", real_expand))
    monkeypatch.setattr(ops, "ligo_expand_vec_multi", count("multi", real_multi))
    model = ligo_fast.grow(small, configs(NAME)[1])
    model.produce()
    # 6 block matrices + 3 embeddings + 2 head linears; all vectors in one multi call
    assert calls == {"expand": 11, "multi": 1}


def test_auto_vectors_use_the_multi_tensor_op_when_the_matrix_backend_has_none(small, monkeypatch):
    from ligo_fast import backends

    calls = []
    monkeypatch.setattr(
        backends,
        "multi_vec_fallback",
        lambda device: lambda probs: calls.append(len(probs)) or [backends.load("torch").expand_vec(*p) for p in probs],
    )
    monkeypatch.setattr(backends, "auto_choice", lambda device: "torch")  # a choice without expand_vec_multi
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    model = ligo_fast.grow(small, configs(NAME)[1])
    model.produce()
    assert calls == [16]  # 10 block vectors (biases, 2 LayerNorms x 2) + 6 outside: all in one call
    calls.clear()
    model.produce(backend="torch")  # a named backend is taken as asked
    assert calls == []


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_small_model(dtype):
    import copy

    small32 = build("LlamaForCausalLM", configs("LlamaForCausalLM")[0])
    small = copy.deepcopy(small32).to(dtype)
    model = ligo_fast.grow(small, configs("LlamaForCausalLM")[1], seed=0, depth_init="rand").eval()
    model32 = ligo_fast.grow(small32, configs("LlamaForCausalLM")[1], seed=0, depth_init="rand").eval()
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)  # the operator stays fp32
    assert all(t.dtype == dtype for t in model.produce().values())
    x = inputs("LlamaForCausalLM")
    with torch.no_grad():
        out, ref = model(**x).logits, model32(**x).logits
    assert out.dtype == dtype
    err = (out.float() - ref).norm() / ref.norm()
    assert err < 3e-2, err  # 16-bit weights and activations against the same operator in fp32
    assert next(ligo_fast.materialize(model).parameters()).dtype == dtype
