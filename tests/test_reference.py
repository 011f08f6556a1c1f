"""The pure-PyTorch path against an independent oracle: the Kronecker form vec(W') = (B_in ⊗ B_out) vec(W).

The same oracle checks the B-matrix oracle of tests/_checks.py, which judges every backend (tests/test_ops.py).
"""

import pytest
import torch
from _checks import oracle_expand, oracle_expand_vec

from ligo_fast import ops
from ligo_fast.reference import expand_torch, expand_vec_torch, in_first

D = torch.float64


def _B(E, small):
    return torch.eye(small, dtype=D) if E is None else torch.cat([torch.eye(small, dtype=D), E.to(D)])


def kron_oracle(W, depth, E_out, E_in, residual):
    """out[l] by materialising B_in ⊗ B_out (only ever for tiny shapes, here)."""
    L1, o1, i1 = W.shape
    outs = []
    for l in range(depth.shape[0]):
        mix = sum(depth[l, j].to(D) * W[j].to(D) for j in range(L1))
        eo = None if E_out is None else (E_out[l] if E_out.dim() == 3 else E_out)
        ei = None if E_in is None else (E_in[l] if E_in.dim() == 3 else E_in)
        Bo, Bi = _B(eo, o1), _B(ei, i1)
        vec = torch.kron(Bi, Bo) @ mix.T.reshape(-1)  # column-major vec
        out = vec.reshape(Bi.shape[0], Bo.shape[0]).T
        outs.append(out + (0 if residual is None else residual[l].to(D)))
    return torch.stack(outs)


SHAPES = [  # (L1, L2, o1, o2, i1, i2)
    (3, 5, 5, 9, 7, 11),
    (1, 4, 6, 6, 5, 8),
    (2, 1, 7, 10, 3, 3),
    (4, 6, 9, 13, 4, 7),  # o1 > i1: rows-first order
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("residual", [False, True])
def test_expand_matches_kronecker_oracle(shape, shared, residual):
    L1, L2, o1, o2, i1, i2 = shape
    W = torch.randn(L1, o1, i1, dtype=D)
    depth = torch.rand(L2, L1, dtype=D)
    lead = () if shared else (L2,)
    E_out = torch.randn(*lead, o2 - o1, o1, dtype=D) if o2 > o1 else None
    E_in = torch.randn(*lead, i2 - i1, i1, dtype=D) if i2 > i1 else None
    R = torch.randn(L2, o2, i2, dtype=D) if residual else None
    out = ops.ligo_expand(W, depth, E_out, E_in, residual=R, backend="torch")
    assert out.shape == (L2, o2, i2) and out.dtype == D
    kron = kron_oracle(W, depth, E_out, E_in, R)
    torch.testing.assert_close(out, kron, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(oracle_expand(W, depth, E_out, E_in, R), kron, rtol=1e-12, atol=1e-12)


def test_both_association_orders_agree():
    W = torch.randn(2, 6, 9, dtype=D)
    depth, Eo, Ei = torch.rand(3, 2, dtype=D), torch.randn(3, 4, 6, dtype=D), torch.randn(3, 5, 9, dtype=D)
    assert in_first(6, 9, 10, 14) and not in_first(9, 6, 14, 10)
    a = expand_torch(W, depth, Eo, Ei)
    b = expand_torch(W.mT.contiguous(), depth, Ei, Eo).mT  # transposed problem takes the other order
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shared", [False, True])
def test_vec_matches_kronecker_oracle(shared):
    b = torch.randn(3, 7, dtype=D)
    depth = torch.rand(4, 3, dtype=D)
    E = torch.randn(5, 7, dtype=D) if shared else torch.randn(4, 5, 7, dtype=D)
    R = torch.randn(4, 12, dtype=D)
    ref = kron_oracle(b[..., None], depth, E, None, R[..., None])[..., 0]
    torch.testing.assert_close(expand_vec_torch(b, depth, E, R), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(oracle_expand_vec(b, depth, E, R), ref, rtol=1e-12, atol=1e-12)


def test_gradients_match_float64_finite_differences():
    W = torch.randn(2, 4, 3, dtype=D, requires_grad=True)
    depth = torch.rand(3, 2, dtype=D, requires_grad=True)
    Eo = torch.randn(3, 2, 4, dtype=D, requires_grad=True)
    Ei = torch.randn(2, 3, dtype=D, requires_grad=True)
    R = torch.randn(3, 6, 5, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: expand_torch(*a), (W, depth, Eo, Ei, R))
    b = torch.randn(2, 4, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: expand_vec_torch(*a), (b, depth, Eo, None))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(W=torch.randn(2, 3)), "W must be"),
        (dict(depth=torch.rand(4, 3)), "depth must be"),
        (dict(E_out=torch.rand(5, 2, 3)), "E_out has 5 layers"),
        (dict(E_in=torch.rand(2, 5)), "E_in has 5 columns"),
        (dict(residual=torch.rand(4, 5, 5)), "residual must be"),
        (dict(W=torch.randint(0, 3, (2, 3, 4))), "floating-point"),
        (dict(depth=torch.rand(4, 2, device="meta")), "one device"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    args = dict(W=torch.randn(2, 3, 4), depth=torch.rand(4, 2), E_out=torch.rand(4, 2, 3), E_in=None, residual=None)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        ops.ligo_expand(
            args["W"], args["depth"], args["E_out"], args["E_in"], residual=args["residual"], backend="torch"
        )
