"""Numerical parity with the official LiGO implementation, on tensors its own code produced."""

import pytest
import torch
from _models import FIXTURE_CASES, case_options, fixture, load_case

import ligo_fast


@pytest.fixture(params=FIXTURE_CASES)
def case(request):
    spec, small, large_cfg = load_case(request.param)
    return request.param, spec, small, large_cfg


def test_official_operator_loads_strictly_and_reproduces_grown_weights(case):
    name, spec, small, large_cfg = case
    model = ligo_fast.grow(small, large_cfg, **case_options(spec))
    model.load_state_dict(fixture(name, "operator"), strict=True)
    grown = fixture(name, "grown")
    produced = ligo_fast.materialize(model).state_dict()
    assert set(grown) <= set(produced)
    err = max((produced[k] - v).abs().max().item() for k, v in grown.items())
    assert err < 1e-5, f"{name}: max abs error {err}"


def test_wrapped_forward_reproduces_official_logits(case):
    name, spec, small, large_cfg = case
    model = ligo_fast.grow(small, large_cfg, **case_options(spec)).eval()
    model.load_state_dict(fixture(name, "operator"))
    io = fixture(name, "io")
    with torch.no_grad():
        logits = model(input_ids=io["input_ids"]).logits
    err = (logits - io["logits"]).abs().max().item()
    assert err < 1e-4, f"{name}: max abs error {err}"


def test_grow_state_dict_has_the_official_keys_and_shapes(case):
    name, spec, small, large_cfg = case
    ours = ligo_fast.grow(small, large_cfg, **case_options(spec)).state_dict()
    official = fixture(name, "operator")
    assert sorted(ours) == sorted(official)
    for k, v in official.items():
        assert tuple(ours[k].shape) == tuple(v.shape), k


def test_official_pytorch_model_bin_loads_through_load_operator(case, tmp_path):
    name, spec, small, large_cfg = case
    torch.save(fixture(name, "operator"), tmp_path / "pytorch_model.bin")
    model = ligo_fast.load_operator(tmp_path, small, large_cfg)
    assert model.ligo_config.tie == spec["options"]["tie"]
    assert model.ligo_config.residual == spec["options"]["residual"]
    grown = fixture(name, "grown")
    produced = model.produce()
    err = max((produced[k] - v).abs().max().item() for k, v in grown.items())
    assert err < 1e-5


def test_save_operator_round_trip(case, tmp_path):
    name, spec, small, large_cfg = case
    model = ligo_fast.grow(small, large_cfg, **case_options(spec))
    model.load_state_dict(fixture(name, "operator"))
    model.save_operator(tmp_path / "op")
    assert (tmp_path / "op" / "operator.safetensors").exists() and (tmp_path / "op" / "ligo_config.json").exists()
    again = ligo_fast.load_operator(tmp_path / "op", small)  # large config from the JSON
    a, b = model.state_dict(), again.state_dict()
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert again.ligo_config == model.ligo_config
