"""The backend layer (ligo_fast/backends.py): one shape for every backend, the choice, the variable, the fallback."""

from __future__ import annotations

import warnings

import pytest
import torch
from _checks import DEV, check_op, expand_inputs, oracle_expand, oracle_expand_vec, vec_inputs

from ligo_fast import backends, info, ops

CASE = (2, 3, 5, 7, 9, 11, "layer", True)
VEC = (2, 3, 5, 9, "layer", True)


@pytest.fixture
def fresh(monkeypatch):
    """No backend loaded or refused yet, nothing warned; the variable unset. Restored afterwards."""
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    backends.clear_cache()
    yield
    backends.clear_cache()


def _loads(name: str) -> bool:
    try:
        backends.load(name)
    except backends.BackendUnavailable:
        return False
    return True


@pytest.mark.parametrize("name", backends.BACKENDS)
def test_every_backend_has_one_shape(name):
    if not _loads(name):
        pytest.skip(f"{name} does not load here")
    b = backends.load(name)
    assert isinstance(b, backends.Backend) and b.name == name
    assert backends.load(name) is b  # loaded once
    check_op(b.expand, oracle_expand, expand_inputs(CASE, torch.float32))
    vb, vd, vE, vR = vec_inputs(VEC, torch.float32)
    multi = b.multi_vec_op(DEV)
    if name != "cpp" or multi is not None:  # cpp vectors on CUDA need its CUDA kernels
        check_op(b.expand_vec, oracle_expand_vec, [vb, vd, vE, vR])
    assert multi is None or callable(multi)
    if multi is not None:
        (out,) = multi([(vb, vd, vE, vR)])
        torch.testing.assert_close(out, b.expand_vec(vb, vd, vE, vR))
    assert b.multi_vec_op("meta") is None
    # what memory-lean mode reads: whether the op's autograd keeps tensors other than its inputs (then the production
    # runs under activation checkpointing)
    args = [None if x is None else x.detach().requires_grad_() for x in expand_inputs(CASE, torch.float32)]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        b.expand(*args)
    mine = {x.untyped_storage().data_ptr() for x in args if x is not None}
    assert any(t.untyped_storage().data_ptr() not in mine for t in saved) == b.saves_intermediates


def test_check_env(fresh, monkeypatch):
    assert backends.check_env() == "auto"
    for raw, value in ((" Triton ", "triton"), ("cpp", "cpp"), ("", "auto"), ("AUTO", "auto")):
        monkeypatch.setenv(backends.ENV_VAR, raw)
        assert backends.check_env() == value
    monkeypatch.setenv(backends.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match=r"LIGO_FAST_BACKEND='bogus' is not a backend; valid values: auto, torch") as e:
        backends.check_env()
    assert "\n" not in str(e.value)


def test_invalid_variable_fails_at_the_first_auto_call(fresh, monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "bogus")
    W, depth, Eo, Ei, R = expand_inputs(CASE, torch.float32, device="cpu")
    with pytest.raises(ValueError, match="valid values"):
        ops.ligo_expand(W, depth, Eo, Ei, residual=R)
    ops.ligo_expand(W, depth, Eo, Ei, residual=R, backend="torch")  # a backend named in the call does not read it


def test_info_report_shows_the_variable(fresh, monkeypatch):
    assert "LIGO_FAST_BACKEND: unset (auto)" in info.report()
    monkeypatch.setenv(backends.ENV_VAR, "torch")
    assert "LIGO_FAST_BACKEND: 'torch' (valid)" in info.report()
    monkeypatch.setenv(backends.ENV_VAR, "bogus")
    assert "LIGO_FAST_BACKEND: 'bogus' (INVALID; valid values: auto, torch, triton, cpp, or unset)" in info.report()


def test_info_report_names_the_backend_auto_will_run(fresh, monkeypatch):
    """Not the preferred backend but the one a call gets here: after the variable and the fallback."""

    def line() -> str:
        (out,) = [x for x in info.report().splitlines() if x.startswith("backend='auto' on cpu: ")]
        return out.removeprefix("backend='auto' on cpu: ")

    if _loads("cpp"):
        assert line() == "cpp"
    monkeypatch.setenv(backends.ENV_VAR, "torch")
    assert line() == "torch (named by LIGO_FAST_BACKEND)"
    monkeypatch.setenv(backends.ENV_VAR, "bogus")
    assert line().startswith("none, every call raises: LIGO_FAST_BACKEND='bogus' is not a backend")
    monkeypatch.delenv(backends.ENV_VAR)

    def broken():
        raise RuntimeError("cannot build here")

    monkeypatch.setitem(backends.LOADERS, "cpp", broken)
    backends.clear_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the report says it in words, without the fallback's warning
        report = info.report()
    assert "backend='auto' on cpu: torch (cpp, preferred here, is unavailable)" in report
    assert "extension: unavailable (RuntimeError: cannot build here)" in report
    monkeypatch.setenv(backends.ENV_VAR, "cpp")
    assert line() == "none, every call raises: backend 'cpp' is unavailable: RuntimeError: cannot build here"


def test_auto_falls_back_with_one_warning_and_a_named_backend_raises(fresh, monkeypatch):
    def broken():
        raise RuntimeError("no such thing here")

    monkeypatch.setitem(backends.LOADERS, "cpp", broken)
    W, depth, Eo, Ei, R = expand_inputs(CASE, torch.float32, device="cpu")
    with pytest.warns(RuntimeWarning, match=r"'cpp' is unavailable: RuntimeError: no such thing here; falling") as w:
        out = ops.ligo_expand(W, depth, Eo, Ei, residual=R)
    assert w[0].filename == __file__  # points at the caller's line
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call is silent
        ops.ligo_expand(W, depth, Eo, Ei, residual=R)
    torch.testing.assert_close(out, ops.ligo_expand(W, depth, Eo, Ei, residual=R, backend="torch"))
    with pytest.raises(backends.BackendUnavailable, match="no such thing here"):
        ops.ligo_expand(W, depth, Eo, Ei, residual=R, backend="cpp")
    assert backends.availability()["cpp"] == "RuntimeError: no such thing here"


def test_a_failure_is_remembered_until_clear_cache(fresh, monkeypatch):
    calls = []
    real = backends.LOADERS["torch"]

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise ImportError("not yet")
        return real()

    monkeypatch.setitem(backends.LOADERS, "torch", flaky)
    for _ in range(2):
        with pytest.raises(backends.BackendUnavailable, match="ImportError: not yet"):
            backends.load("torch")
    assert len(calls) == 1
    backends.clear_cache()
    assert backends.load("torch").name == "torch" and len(calls) == 2


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="unknown backend 'bogus'; valid: auto, torch, triton, cpp"):
        backends.load("bogus")
