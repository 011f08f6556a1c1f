"""torch.compile(fullgraph=True) in a fresh process: no backend loaded before tracing starts.

Loading a backend imports modules and may build the extension, which Dynamo cannot trace; ligo_fast chooses and
loads the backend outside the traced code (the choice is a compile-time constant). Each case runs in its own
interpreter so that nothing earlier in the test session has loaded a backend already; the backend loaders are
wrapped to record which ones run, and when.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

_OPS = """
import sys, torch
torch.set_num_threads(1)
from ligo_fast import backends, ops, reference
assert not {"ligo_fast.triton_ops", "ligo_fast.extension"} & set(sys.modules), "importing loaded a backend"
loads = []
for _name, _loader in list(backends.LOADERS.items()):
    backends.LOADERS[_name] = lambda _n=_name, _f=_loader: loads.append(_n) or _f()
g = torch.Generator().manual_seed(0)
def rnd(*s):
    return torch.randn(*s, generator=g, dtype=torch.float64).float().requires_grad_()
W, d, Eo, Ei = rnd(2, 7, 5), rnd(3, 2), rnd(3, 4, 7), rnd(6, 5)
b, db, E1, R1 = rnd(2, 7), rnd(3, 2), rnd(3, 4, 7), rnd(3, 11)
b2, d2 = rnd(1, 3), rnd(2, 1)

def f(W, d, Eo, Ei, b, db, E1, R1, b2, d2):
    y = ops.ligo_expand(W, d, Eo, Ei, backend=BACKEND)
    v = ops.ligo_expand_vec(b, db, E1, residual=R1, backend=BACKEND)
    m = ops.ligo_expand_vec_multi([(b, db, E1, R1), (b2, d2, None, None)], backend=BACKEND)
    return (y.square().sum() + (v * v.detach()).sum() + m[0].sin().sum() + m[1].cos().sum())

args = (W, d, Eo, Ei, b, db, E1, R1, b2, d2)
loss = torch.compile(f, fullgraph=True)(*args)
grads = torch.autograd.grad(loss, args)
chosen = sorted(loads)

def g64(*a):  # float64 oracle through the pure-PyTorch path
    a = [x.detach().double().requires_grad_() for x in a]
    W, d, Eo, Ei, b, db, E1, R1, b2, d2 = a
    y = reference.expand_torch(W, d, Eo, Ei, None)
    v = reference.expand_vec_torch(b, db, E1, R1)
    m0, m1 = reference.expand_vec_torch(b, db, E1, R1), reference.expand_vec_torch(b2, d2, None, None)
    loss = y.square().sum() + (v * v.detach()).sum() + m0.sin().sum() + m1.cos().sum()
    return loss, torch.autograd.grad(loss, a)

ref_loss, ref_grads = g64(*args)
assert abs(loss.item() - ref_loss.item()) <= 1e-4 * abs(ref_loss.item()), (loss.item(), ref_loss.item())
for i, (a, r) in enumerate(zip(grads, ref_grads)):
    err = (a.double() - r).abs().max().item()
    assert err <= 1e-4 * (1 + r.abs().max().item()), (i, err)
print("OK", chosen)
"""

_MODEL = """
import sys, torch
torch.set_num_threads(1)
sys.path.insert(0, TESTS)
import _models, ligo_fast
from ligo_fast import backends
loads = []
for _name, _loader in list(backends.LOADERS.items()):
    backends.LOADERS[_name] = lambda _n=_name, _f=_loader: loads.append(_n) or _f()
small_cfg, large_cfg = _models.configs("LlamaForCausalLM")
small = _models.build("LlamaForCausalLM", small_cfg)
model = ligo_fast.grow(small, large_cfg, depth_init="stackbert_noisy", width_init="rand").eval()
assert not loads, "grow loaded a backend before tracing"
x = _models.inputs("LlamaForCausalLM")
out = torch.compile(model, fullgraph=True)(**x).logits
out.square().mean().backward()
compiled_grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
model.zero_grad()
ref = model(**x).logits
ref.square().mean().backward()
assert (out - ref).abs().max().item() < 1e-5
for a, p in zip(compiled_grads, [p for p in model.parameters() if p.requires_grad]):
    assert (a - p.grad).abs().max().item() <= 1e-5 * (1 + p.grad.abs().max().item())
print("OK", sorted(loads))
"""


def _run(code: str, **consts) -> str:
    header = "".join(f"{k} = {v!r}\n" for k, v in consts.items())
    env = dict(os.environ, TRITON_INTERPRET=os.environ.get("TRITON_INTERPRET", "1"))
    env.pop("LIGO_FAST_BACKEND", None)
    proc = subprocess.run(
        [sys.executable, "-c", header + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


@pytest.mark.parametrize("backend, expect", [("auto", "cpp"), ("torch", "torch"), ("triton", "triton")])
def test_ops_compile_fullgraph_cold(backend, expect):
    out = _run(_OPS, BACKEND=backend)
    assert out.startswith("OK") and expect in out, out


def test_grown_model_compiles_fullgraph_cold():
    out = _run(_MODEL, TESTS=str(ROOT / "tests"))
    assert out.startswith("OK"), out
