"""The grouped Triton op (``ligo_fast::expand_group_triton``): every stage one launch for several problems.

Each problem's output and gradients against the float64 oracle (tests/_checks.py's rule), in a group that mixes both
orientations, shared and per-layer E, one-sided and E-less problems, vectors, and several problems of the same shape
(a swap between them, or a table row read off by one, gives wrong numbers or unwritten NaN-poisoned outputs); the
launch count; opcheck; torch.compile(fullgraph=True); the model's production through it. On CPU the kernels run
through Triton's interpreter (tests/conftest.py).
"""

from __future__ import annotations

import pytest
import torch
import transformers

pytest.importorskip("triton")

from _checks import (  # noqa: E402
    DEV,
    MATRIX_CASES,
    VEC_CASES,
    assert_close_to_oracle,
    expand_inputs,
    oracle_expand,
    oracle_expand_vec,
    vec_inputs,
)
from _models import configs  # noqa: E402

import ligo_fast  # noqa: E402
from ligo_fast import backends, ops  # noqa: E402
from ligo_fast import triton_ops as T  # noqa: E402
from ligo_fast.kernels import group as KG  # noqa: E402

# residual-free problems: both orientations, shared / per-layer / one-sided / no E, size 1; three of one shape
MATS = ["odd-perlayer-res", "out-first", "shared", "E_out-only", "E_in-only", "no-E-no-res", "L2=1", "size-1"]
VECS = ["perlayer-res", "shared", "no-E", "width-1"]
SAME = (2, 3, 13, 11, 20, 19, "layer", False)  # q, k, v: one shape, three problems


def _group_inputs(dtype, device=DEV):
    mats = [expand_inputs((*MATRIX_CASES[c][:7], False), dtype, device=device)[:4] for c in MATS]
    mats += [expand_inputs(SAME, dtype, device=device)[:4] for _ in range(3)]
    vecs = [vec_inputs((*VEC_CASES[c][:5], False), dtype, device=device)[:3] for c in VECS]
    return mats, vecs


def _leaves(problems):
    return [[None if t is None else t.detach().clone().requires_grad_(True) for t in p] for p in problems]


def _check_group(mats, vecs, dtype):
    """ops.ligo_expand_many on the Triton backend: each output and gradient against the float64 oracle."""
    mats, vecs = _leaves(mats), _leaves(vecs)
    outs_m, outs_v = ops.ligo_expand_many([(*m, None) for m in mats], [(*v, None) for v in vecs], backend="triton")
    outs = outs_m + outs_v
    gen = torch.Generator(device=outs[0].device).manual_seed(1)
    gs = [torch.randn(o.shape, generator=gen, device=o.device).to(o.dtype) for o in outs]
    leaves = [t for p in mats + vecs for t in p if t is not None]
    grads = torch.autograd.grad(outs, leaves, gs)
    k = 0
    for i, (p, out, g) in enumerate(zip(mats + vecs, outs, gs, strict=True)):
        ref_in = [None if t is None else t.detach().double().requires_grad_(True) for t in p]
        ref = oracle_expand(*ref_in) if i < len(mats) else oracle_expand_vec(*ref_in)
        present = [t for t in ref_in if t is not None]
        ref_grads = torch.autograd.grad(ref, present, g.double())
        assert out.dtype == p[0].dtype
        assert_close_to_oracle(out.detach(), ref.detach(), dtype, f"problem {i} out")
        for j, r in enumerate(ref_grads):
            assert grads[k].dtype == [t for t in p if t is not None][j].dtype
            assert_close_to_oracle(grads[k], r, dtype, f"problem {i} grad {j}")
            k += 1


@pytest.fixture
def launches(monkeypatch):
    """The grouped launches made, by kernel name, counted as they are queued."""
    made: list[str] = []
    real = KG._Batch.run

    def run(self):
        made.extend(k.fn.__name__ if hasattr(k, "fn") else str(k) for k, *_ in self.launches)
        return real(self)

    monkeypatch.setattr(KG._Batch, "run", run)
    return made


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_group_matches_oracle(dtype, poison_empty, launches):
    """Forward and every gradient of 15 problems in one grouped call (bf16 is unreliable in the interpreter; the gpu
    test covers it)."""
    mats, vecs = _group_inputs(dtype)
    _check_group(mats, vecs, dtype)
    # forward: mix, columns, rows; backward: mix, Y, dE_out, S, dE_in, dWm, layer gradients, d depth sums; a stage
    # splits only by tile and stride pattern (here: the orientations and the vectors' unit column)
    assert 3 <= len(launches) <= 30, launches
    assert set(launches) == {
        "_ligo_group_mix_kernel",
        "_ligo_group_gemm_kernel",
        "_ligo_group_layer_grad_kernel",
        "_ligo_group_depth_sum_kernel",
    }


def test_group_same_shapes_not_swapped(poison_empty):
    """Three problems of one shape whose outputs differ: each output is its own problem's (a swap or an off-by-one
    in the programs' table lookup fails here)."""
    probs = [expand_inputs(SAME, torch.float32)[:4] for _ in range(3)]
    outs = T.TritonBackend().expand_group(probs)
    for p, out in zip(probs, outs, strict=True):
        ref = oracle_expand(*[None if t is None else t.double() for t in p])
        assert_close_to_oracle(out, ref, torch.float32)
    assert (outs[0] - outs[1]).abs().max() > 0.1


def test_group_needs_subsets():
    """Only some inputs need gradients (frozen W, fixed depth, one E trained): those gradients are right, the others
    are None."""
    mats, _ = _group_inputs(torch.float32)
    mats = mats[:3]
    leaves = [[t if t is None else t.detach().clone().requires_grad_(k == (i % 4)) for k, t in enumerate(p)]
              for i, p in enumerate(mats)]  # fmt: skip
    outs, _ = ops.ligo_expand_many([(*m, None) for m in leaves], [], backend="triton")
    gs = [torch.randn(o.shape, device=o.device) for o in outs]
    wanted = [p[i % 4] for i, p in enumerate(leaves)]
    got = torch.autograd.grad(outs, wanted, gs)
    for i, (p, g, w) in enumerate(zip(leaves, gs, got, strict=True)):
        ref_in = [t if t is None else t.detach().double().requires_grad_(k == (i % 4)) for k, t in enumerate(p)]
        (r,) = torch.autograd.grad(oracle_expand(*ref_in), [ref_in[i % 4]], g.double())
        assert_close_to_oracle(w, r, torch.float32, f"problem {i}")


def test_group_rest_falls_back_per_kind():
    """float64 problems go to the reference, residuals to the per-kind op, 65 layers to the per-kind launchers."""
    W, d, Eo, Ei, R = expand_inputs((2, 3, 9, 11, 15, 17, "layer", True), torch.float32)
    deep = expand_inputs((65, 2, 5, 4, 7, 6, "layer", False), torch.float32)[:4]
    mats = [(W, d, Eo, Ei, R), (W.double(), d.double(), Eo.double(), Ei.double(), None), (*deep, None)]
    outs, _ = ops.ligo_expand_many(mats, [], backend="triton")
    for m, out in zip(mats, outs, strict=True):
        assert_close_to_oracle(out, oracle_expand(*[None if t is None else t.double() for t in m]), out.dtype)


def test_group_leaves_large_problems_to_the_per_kind_launchers(monkeypatch):
    """A problem above tuning.GROUP_MAX_ELEMENTS output elements runs on the per-kind launchers (forward and
    backward), the rest stay grouped; every output and gradient still matches the oracle."""
    small = expand_inputs((2, 3, 5, 4, 7, 6, "layer", False), torch.float32)[:4]  # 3 * 7 * 6 = 126 elements
    big = expand_inputs((2, 3, 9, 11, 15, 17, "shared", False), torch.float32)[:4]  # 3 * 15 * 17 = 765 elements
    monkeypatch.setattr(KG.tuning, "GROUP_MAX_ELEMENTS", 500)
    seen = {"fwd": [], "bwd": []}
    fwd, bwd = KG.expand_fwd, KG.expand_bwd
    monkeypatch.setattr(KG, "expand_fwd", lambda W, *a: seen["fwd"].append(tuple(W.shape)) or fwd(W, *a))
    monkeypatch.setattr(KG, "expand_bwd", lambda G, W, *a: seen["bwd"].append(tuple(W.shape)) or bwd(G, W, *a))
    _check_group([small, big], [], torch.float32)
    assert seen == {"fwd": [tuple(big[0].shape)], "bwd": [tuple(big[0].shape)]}


@pytest.mark.cpu_only  # opcheck: nothing a GPU adds; gpu_check.sh deselects it
def test_opcheck_group():
    probs = [
        expand_inputs((2, 2, 5, 3, 7, 4, "shared", False), torch.float32)[:4],  # rows first
        expand_inputs((1, 2, 3, 2, 3, 5, "layer", False), torch.float32)[:4],  # E_in only
        vec_inputs((2, 2, 3, 5, "layer", False), torch.float32)[:3],
    ]
    W, d = [p[0] for p in probs], [p[1] for p in probs]
    Eo = [T.no_e(p[0]) if p[2] is None else p[2] for p in probs]
    Ei = [T.no_e(p[0]) if len(p) < 4 or p[3] is None else p[3] for p in probs]
    args = [[t.detach().clone().requires_grad_(True) for t in x] for x in (W, d, Eo, Ei)]
    torch.library.opcheck(torch.ops.ligo_fast.expand_group_triton.default, tuple(args))
    g = [torch.randn(o.shape) for o in torch.ops.ligo_fast.expand_group_triton(W, d, Eo, Ei)]
    for need in ([True] * 4, [False, True, True, False]):
        flags = [[f] * len(W) for f in need]
        torch.library.opcheck(torch.ops.ligo_fast.expand_group_triton_backward.default, (g, W, d, Eo, Ei, *flags))


def test_torch_compile_fullgraph_group():
    """ligo_expand_many(backend="triton") inside torch.compile(fullgraph=True), forward and backward."""
    mats = _leaves([expand_inputs((2, 3, 9, 5, 12, 8, "layer", False), torch.float32)[:4]])
    vecs = _leaves([vec_inputs((2, 3, 5, 7, "shared", False), torch.float32)[:3]])
    flat = [t for p in mats + vecs for t in p if t is not None]

    def f(*flat):
        it = iter(flat)
        ms = [tuple(None if t is None else next(it) for t in p) for p in mats]
        vs = [tuple(None if t is None else next(it) for t in p) for p in vecs]
        outs_m, outs_v = ops.ligo_expand_many([(*m, None) for m in ms], [(*v, None) for v in vs], backend="triton")
        return sum((o * o).sum() for o in outs_m) + sum(o.sin().sum() for o in outs_v)

    torch._dynamo.reset()
    backends.load("triton")  # warm cache (a cold one: tests/test_compile.py)
    loss = torch.compile(f, fullgraph=True)(*flat)
    grads = torch.autograd.grad(loss, flat)
    ref_flat = [t.detach().double().requires_grad_(True) for t in flat]
    it = iter(ref_flat)
    ref = 0
    for i, p in enumerate(mats + vecs):
        args = [None if t is None else next(it) for t in p]
        ref = ref + ((oracle_expand(*args) ** 2).sum() if i < len(mats) else oracle_expand_vec(*args).sin().sum())
    ref_grads = torch.autograd.grad(ref, ref_flat)
    assert abs(loss.item() - ref.item()) <= 1e-5 * abs(ref.item())
    for a, r in zip(grads, ref_grads, strict=True):
        assert_close_to_oracle(a, r, torch.float32)


def test_model_production_is_one_grouped_call(monkeypatch):
    """A grown model's production on the Triton backend: one grouped forward call for every module kind, numbers as
    the torch backend's (forward and gradients, random operator tensors); LIGO_FAST_TRITON_GROUPED=0: per kind."""
    small, large = configs("LlamaForCausalLM")
    for c, layers in ((small, 1), (large, 2)):  # small: the interpreter's time grows with the programs
        c.num_hidden_layers, c.vocab_size = layers, 7
    m = ligo_fast.grow(transformers.LlamaForCausalLM(small), large).to(DEV)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))  # off the exact (copying) start: every term counts
    calls = []
    real = KG.expand_group_fwd
    monkeypatch.setattr(KG, "expand_group_fwd", lambda *a: calls.append(len(a[0])) or real(*a))

    def produced(backend):
        out = m.produce(backend=backend)
        names = sorted(k for k, v in out.items() if v.requires_grad)
        gen = torch.Generator(device=DEV).manual_seed(2)
        loss = sum((out[k].float() * torch.randn(out[k].shape, generator=gen, device=DEV)).sum() for k in names)
        params = [p for p in m.parameters() if p.requires_grad]
        return [out[k].detach() for k in names], torch.autograd.grad(loss, params, allow_unused=True)

    ref_out, ref_grads = produced("torch")
    out, grads = produced("triton")
    assert len(calls) == 1 and calls[0] >= 8, calls  # q, k, v, o, gate, up, down, 2 norms (+ globals' matrices)
    for a, r in zip(out + list(grads), ref_out + list(ref_grads), strict=True):
        assert (a is None) == (r is None)
        if a is not None:
            torch.testing.assert_close(a, r, atol=1e-4, rtol=1e-4)
    monkeypatch.setattr(backends.load("triton"), "grouped", False)
    calls.clear()
    with torch.no_grad():
        out_off, ref = m.produce(backend="triton"), m.produce(backend="torch")
    assert calls == [] and out_off.keys() == ref.keys()
    for k, r in ref.items():
        torch.testing.assert_close(out_off[k], r, atol=1e-4, rtol=1e-4)


def test_other_backends_have_no_group_op():
    for name in ("torch",):
        assert backends.load(name).group_op("cpu") is None
    W, d, Eo, Ei, _ = expand_inputs((2, 3, 9, 11, 15, 17, "layer", False), torch.float32)
    b, bd, bE, _ = vec_inputs((2, 3, 9, 15, "layer", False), torch.float32)
    (out,), (v,) = ops.ligo_expand_many([(W, d, Eo, Ei, None)], [(b, bd, bE, None)], backend="torch")
    torch.testing.assert_close(out, ops.ligo_expand(W, d, Eo, Ei, backend="torch"))
    torch.testing.assert_close(v, ops.ligo_expand_vec(b, bd, bE, backend="torch"))


# ------------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
def test_gpu_group(dtype, poison_empty):
    """Model-like sizes (BERT-ish q/k/v/o, FFN in both orientations, biases) in one group, every dtype."""
    cases = [(3, 6, 96, 96, 144, 144, "layer", False)] * 3 + [
        (3, 6, 384, 96, 576, 144, "shared", False),
        (3, 6, 96, 384, 144, 576, "layer", False),
        (3, 6, 96, 160, 144, 240, "layer", False),
    ]
    mats = [expand_inputs(c, dtype)[:4] for c in cases]
    vecs = [vec_inputs((3, 6, 96, 144, "layer", False), dtype)[:3] for _ in range(4)]
    vecs += [vec_inputs((3, 6, 384, 576, "shared", False), dtype)[:3]]
    _check_group(mats, vecs, dtype)
