"""Benchmark the LiGO growth operator's weight production on whole models: numbers, not tests.

Providers, side by side in one run:

* ``official``: the official LiGO code's math (``common.official_weight``), one module per large layer: the
  depth mix as an elementwise product with (out, in, L1)-stacked weights summed over the last axis, then
  ``cat`` growing the input dimension first, then the output dimension.
* ``official+compile``: ``torch.compile`` of that per-layer function (one graph per shape, reused by every
  layer and module kind of that shape; ``LIGO_BENCH_COMPILE_BACKEND=eager`` for a dry run without inductor).
* ``torch``: ``ligo_expand(backend="torch")`` (the pure-PyTorch path; one call per module kind, all layers). It
  computes 16-bit problems in float32 (``reference.compute_dtype``), so its 16-bit rows are labelled
  ``torch (fp32 math)``: no eager 16-bit baseline (``official`` is that).
* ``triton``: ``ligo_expand(backend="triton")`` (GPU; on CPU only under Triton's interpreter, ``TRITON_INTERPRET=1``:
  plumbing, no benchmark), one call per module kind.
* ``triton-grouped``: ``ligo_expand_many(backend="triton")``: every module kind in one grouped call, each stage of the
  forward and backward one launch for all kinds (``kernels/group.py``), as the model's production runs.

Shapes (``common.SHAPES``, every block tensor of the model: ``common.module_kinds``): ``bert`` (6L/512H ->
12L/768H: q, k, v, attn-out, ffn-in, ffn-out weights, their biases, 2 LayerNorms), ``llama`` (8L/512H ->
16L/1024H, GQA) and ``llama-xl`` (16L/2048H -> 32L/4096H, the roofline shape), all with RMSNorm weights.
Width matrices are per layer. FLOPs are counted explicitly (``flops``): the cheaper association order,
identity blocks free, the same count for every provider, so TFLOP/s compares times.

Inputs are drawn on the device itself. Before timing, every provider's output is compared with the ``torch``
path's one module kind at a time (relative Frobenius difference, asserted against a tolerance per dtype: a provider
that fails or differs is reported, left out of the timing and makes the exit status 1). Every provider's backward
gets the same upstream gradients (one set per shape). A shape whose fwd+bwd would not fit in the device's memory
(``needed_bytes``) is skipped with a note.

Timing (``common.time_interleaved``): forward and fwd+bwd interleave the providers round by round; backward
(gradients through a retained graph) times one provider at a time so that only one graph is alive. The ceilings
(a large matmul in the dtype, a device copy) are measured on the machine itself; ``% peak`` is against that matmul
rate and ``roof%`` is the roofline time (FLOPs and fewest bytes over the measured ceilings) over the measured time.
``--jsonl`` appends every row as one JSON object (``gpu_check.sh``'s summary reads them).

    python benchmarks/bench_expand.py --device cuda --dtype bfloat16 --shapes all --out benchmarks/RESULTS.md
    python benchmarks/bench_expand.py --device cpu --quick
    python benchmarks/bench_expand.py --check       # the official provider against the official fixtures
    TRITON_INTERPRET=1 python benchmarks/bench_expand.py --device cpu --count-launches  # kernel launches, no timing
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch
from common import (
    DTYPES,
    SHAPES,
    Kind,
    append_markdown,
    device_name,
    module_kinds,
    official_weight,
    run_check,
    run_header,
    time_interleaved,
)

from ligo_fast import ops

MODES = ("forward", "backward", "fwd+bwd")
PROVIDERS = ("official", "official+compile", "torch", "triton", "triton-grouped")
TRITON = ("triton", "triton-grouped")
# relative Frobenius difference from the torch path allowed per output: 16-bit providers round intermediates (the
# official math rounds the depth mix and the half-expanded weight); float32 leaves room for TF32-class dots
TOLERANCE = {"bfloat16": 3e-2, "float16": 1e-2, "float32": 1e-3}


def flops(m: Kind, mode: str) -> float:
    """Explicit FLOP count (2 per multiply-add) for one module kind, all layers, times ``count``."""
    a, L1, L2, o1 = m.o2 - m.o1, m.L1, m.L2, m.o1
    mix = 2 * L2 * L1 * o1 * max(m.i1, 1)
    if m.i1 == 0:
        fwd = mix + 2 * L2 * a * o1
        bwd = 2 * L2 * a * o1 * 2 + 2 * mix  # dE and d(mixed b); db and d depth
    else:
        i1, b = m.i1, m.i2 - m.i1
        fwd = mix + 2 * L2 * min(o1 * i1 * b + a * o1 * m.i2, a * o1 * i1 + m.o2 * i1 * b)
        # Y, dE_out, S, dE_in, dWm (see kernels/expand.py), recomputed mix, dW and d depth
        bwd = 2 * L2 * (a * b * i1 + a * i1 * o1 + o1 * a * m.i2 + b * o1 * i1 + o1 * b * i1) + 3 * mix
    return m.count * {"forward": fwd, "backward": bwd, "fwd+bwd": fwd + bwd}[mode]


def bytes_moved(m: Kind, itemsize: int, mode: str) -> float:
    """Fewest bytes: inputs read once, outputs written once (gradient of the output read once in backward)."""
    i1, i2 = max(m.i1, 1), max(m.i2, 1)
    ins = m.L1 * m.o1 * i1 + m.L2 * ((m.o2 - m.o1) * m.o1 + (i2 - i1) * i1) + m.L2 * m.L1
    out = m.L2 * m.o2 * i2
    fwd = (ins + out) * itemsize
    bwd = (out + 2 * ins) * itemsize
    return m.count * {"forward": fwd, "backward": bwd, "fwd+bwd": fwd + bwd}[mode]


# -------------------------------------------------------------------------------------------- providers


def make_inputs(m: Kind, dtype, device, seed: int):
    """W, depth, E_out, E_in of one module kind, drawn on ``device`` (no host copies of model-size tensors)."""
    g = torch.Generator(device=device).manual_seed(seed)

    def rnd(*shape, scale=1.0):
        x = torch.randn(*shape, generator=g, device=device, dtype=torch.float32).mul_(scale)
        return x.to(dtype).requires_grad_(True)

    if m.i1 == 0:
        W = rnd(m.L1, m.o1)
        Ei = None
    else:
        W = rnd(m.L1, m.o1, m.i1)
        Ei = rnd(m.L2, m.i2 - m.i1, m.i1, scale=m.i1**-0.5)
    depth = rnd(m.L2, m.L1, scale=m.L1**-0.5)
    Eo = rnd(m.L2, m.o2 - m.o1, m.o1, scale=m.o1**-0.5)
    return W, depth, Eo, Ei


def out_shape(m: Kind) -> tuple[int, ...]:
    return (m.L2, m.o2) if m.i1 == 0 else (m.L2, m.o2, m.i2)


def needed_bytes(kinds: list[Kind], itemsize: int) -> int:
    """A generous bound on device memory for a shape's fwd+bwd: every output and its upstream gradient in the
    dtype, plus float32 copies of both (the torch path's float32 math keeps them), plus the inputs."""
    outs = sum(m.count * math.prod(out_shape(m)) for m in kinds)
    ins = sum(bytes_moved(m, itemsize, "forward") for m in kinds) - outs * itemsize
    return int(outs * (2 * itemsize + 2 * 4) + 3 * ins)


class Problem:
    """All module kinds of one model, with inputs laid out for each provider and one set of upstream gradients."""

    def __init__(self, kinds: list[Kind], dtype, device):
        self.kinds = kinds
        self.inputs = []  # per module kind (count copies): (Kind, W, depth, E_out, E_in, W_stacked)
        for k, m in enumerate(kinds):
            for c in range(m.count):
                W, depth, Eo, Ei = make_inputs(m, dtype, device, seed=1000 * k + c)
                W_st = W.detach().movedim(0, -1).contiguous().requires_grad_(True)  # official layout, set up once
                self.inputs.append((m, W, depth, Eo, Ei, W_st))
        g = torch.Generator(device=device).manual_seed(1)
        self.grads = [
            torch.randn(out_shape(m), generator=g, device=device, dtype=torch.float32).to(dtype)
            for m, *_ in self.inputs
        ]

    def leaves(self, provider: str) -> list[torch.Tensor]:
        out = []
        for _, W, depth, Eo, Ei, W_st in self.inputs:
            out += [W_st if provider.startswith("official") else W, depth, Eo] + ([] if Ei is None else [Ei])
        return out

    def forward_entry(self, provider: str, entry: tuple) -> list[torch.Tensor]:
        """One module kind's outputs: one per large layer for the official providers, else one stacked tensor."""
        m, W, depth, Eo, Ei, W_st = entry
        if provider == "triton-grouped":
            return self._grouped([entry])
        if provider.startswith("official"):
            layer_fn = _layer_fn(provider)
            return [layer_fn(W_st, depth[ll], Eo[ll], None if Ei is None else Ei[ll]) for ll in range(m.L2)]
        if Ei is None:
            return [ops.ligo_expand_vec(W, depth, Eo, backend=provider)]
        return [ops.ligo_expand(W, depth, Eo, Ei, backend=provider)]

    def forward(self, provider: str) -> list[torch.Tensor]:
        if provider == "triton-grouped":
            return self._grouped(self.inputs)
        return [o for e in self.inputs for o in self.forward_entry(provider, e)]

    @staticmethod
    def _grouped(entries) -> list[torch.Tensor]:
        """Every module kind of ``entries`` in one ``ligo_expand_many`` call, outputs in the entries' order."""
        mats = [(W, d, Eo, Ei, None) for _, W, d, Eo, Ei, _ in entries if Ei is not None]
        vecs = [(W, d, Eo, None) for _, W, d, Eo, Ei, _ in entries if Ei is None]
        outs_m, outs_v = ops.ligo_expand_many(mats, vecs, backend="triton")
        it_m, it_v = iter(outs_m), iter(outs_v)
        return [next(it_v) if e[4] is None else next(it_m) for e in entries]

    def upstream(self, provider: str) -> list[torch.Tensor]:
        """The shared upstream gradients, laid out as ``forward(provider)``'s outputs."""
        if provider.startswith("official"):
            return [g[ll] for g in self.grads for ll in range(g.shape[0])]
        return list(self.grads)


_compiled = {}


def _layer_fn(provider: str):
    if provider != "official+compile":
        return official_weight
    if not _compiled:
        for name in ("recompile_limit", "cache_size_limit"):  # one graph per shape and grad mode
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 64)
        backend = os.environ.get("LIGO_BENCH_COMPILE_BACKEND", "inductor")  # "eager": a dry run's Dynamo plumbing
        _compiled["fn"] = torch.compile(official_weight, dynamic=False, backend=backend)
    return _compiled["fn"]


# ---------------------------------------------------------------------------------------------- timing


def step_fn(problem: Problem, provider: str, mode: str):
    """The function to time: forward (no grad), backward (through a graph built here, retained) or both."""
    leaves = problem.leaves(provider)
    if mode == "forward":

        def fn():
            with torch.no_grad():
                return problem.forward(provider)

        return fn
    grads = problem.upstream(provider)
    if mode == "backward":
        outs = problem.forward(provider)
        return lambda: torch.autograd.grad(outs, leaves, grads, retain_graph=True)
    return lambda: torch.autograd.grad(problem.forward(provider), leaves, grads)


def peak_extra_mib(fn) -> float:
    """GPU: memory one call allocates beyond what is alive before it (MiB)."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    res = fn()
    torch.cuda.synchronize()
    del res
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def time_mode(problem: Problem, providers: list[str], mode: str, args) -> dict:
    """{provider: (Stats, peak extra MiB)}; a provider that fails is reported and left out."""
    cuda = args.device == "cuda"
    kw = dict(rounds=args.rounds, warmup=1, min_sample_s=0.05 if cuda else 0.0)
    if args.tiny:  # a dry run: every call is slow (Triton interpreted), one timed call each
        kw.update(warmup=0, calibrate=False)

    def prepare(p: str):
        try:
            fn = step_fn(problem, p, mode)
            if not args.tiny:
                fn()  # compile / autotune / warm caches outside the timing
            return fn, (peak_extra_mib(fn) if cuda else float("nan"))
        except Exception as e:  # noqa: BLE001 - a provider that cannot run is reported, not fatal
            print(f"{mode} {p}: failed: {type(e).__name__}: {e}", flush=True)
            return None, None

    results = {}
    if mode == "backward":  # one retained graph alive at a time
        for p in providers:
            fn, peak = prepare(p)
            if fn is not None:
                results[p] = (time_interleaved({p: fn}, args.device, **kw)[p], peak)
            del fn
    else:
        prepared = {p: prepare(p) for p in providers}
        ready = {p: fn for p, (fn, _) in prepared.items() if fn is not None}
        stats = time_interleaved(ready, args.device, **kw)
        results = {p: (stats[p], prepared[p][1]) for p in ready}
    if cuda:
        torch.cuda.empty_cache()
    return results


def check_agreement(problem: Problem, providers: list[str], tol: float) -> dict[str, dict]:
    """Each provider's outputs against the ``torch`` path's, one module kind at a time (one kind's outputs alive).

    {provider: {"rel": worst relative Frobenius difference over the kinds, "kind": where, "ok": rel <= tol,
    "error": the exception's line when the provider failed}}; a failure is reported, not raised.
    """
    res = {p: {"rel": 0.0, "kind": "-", "ok": True, "error": None} for p in providers if p != "torch"}
    with torch.no_grad():
        for entry in problem.inputs:
            ref = problem.forward_entry("torch", entry)[0].float()
            for p, r in res.items():
                if r["error"] is not None:
                    continue
                try:
                    o = problem.forward_entry(p, entry)
                    o = (torch.stack(o) if p.startswith("official") else o[0]).float()
                    rel = ((o - ref).norm() / ref.norm().clamp_min(1e-30)).item()
                    del o
                except Exception as e:  # noqa: BLE001 - one provider's failure is reported, the others go on
                    r.update(error=f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e) else ''}")
                    r["ok"] = False
                    continue
                if rel != rel or rel > r["rel"]:
                    r.update(rel=rel, kind=entry[0].name)
                if not rel <= tol:
                    r["ok"] = False
            del ref
    return res


def measure_ceilings(dtype, device: str) -> tuple[float, float]:
    """Measured matmul TFLOP/s in ``dtype`` and device copy GB/s (read + write) here: 8192^3 and 1 GiB on a GPU,
    256^3 and 4 MiB on a CPU (a dry run's plumbing, no ceiling worth the name)."""
    cuda = device == "cuda"
    n, numel = (8192, 2**28) if cuda else (256, 2**20)
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=g).to(dtype)
    b = torch.randn(n, n, device=device, generator=g).to(dtype)  # random, never zeros: zeros run faster
    kw = dict(rounds=5 if cuda else 1, min_sample_s=0.05 if cuda else 0.0)
    s = time_interleaved({"mm": lambda: a @ b}, device, **kw)["mm"].median
    tflops = 2 * n**3 / s / 1e12
    x = torch.randn(numel, device=device, generator=g)
    y = torch.empty_like(x)
    s = time_interleaved({"copy": lambda: y.copy_(x)}, device, **kw)["copy"].median
    gbs = 2 * x.numel() * 4 / s / 1e9
    return tflops, gbs


def label(provider: str, dtype_name: str) -> str:
    """The row's name: the torch path upcasts 16-bit problems, so it is no eager 16-bit baseline."""
    return "torch (fp32 math)" if provider == "torch" and dtype_name != "float32" else provider


def device_memory(device: str) -> int | None:
    return torch.cuda.get_device_properties(0).total_memory if device == "cuda" else None


# ------------------------------------------------------------------------------------------- launch counts

# aten ops that launch no device kernel (views, allocations) or only through the ops they call (counted instead)
_NO_KERNEL = {
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "view", "_unsafe_view", "as_strided",
    "slice", "select", "unsqueeze", "squeeze", "t", "transpose", "permute", "expand", "detach", "alias", "unbind",
    "split", "split_with_sizes", "chunk", "narrow", "movedim", "lift_fresh", "resolve_conj", "resolve_neg",
    "_reshape_alias", "reshape", "contiguous", "to", "_to_copy", "numpy_T", "mT", "_local_scalar_dense", "item",
    "result_type", "is_same_size",
}  # fmt: skip


_LAUNCH = "bench_expand: a Triton launch"


def count_launches(fn) -> tuple[int, int]:
    """(Triton kernel launches, other device kernels) of one call of ``fn``, counted on the host: every Triton launch
    (compiled or interpreted; autotuning's trial runs would count too: warm up first), and every aten op that launches
    a kernel and is not called by another such op (``torch.profiler``'s CPU events; an approximation: a composite op
    may launch more than one kernel on a GPU, a CPU-to-GPU table copy of the grouped path counts as none)."""
    from triton.runtime import interpreter, jit

    n = [0]
    patched = []
    for cls in (jit.JITFunction, interpreter.InterpretedFunction):
        real = cls.run

        def run(self, *a, _real=real, **k):
            n[0] += not k.get("warmup")
            with torch.profiler.record_function(_LAUNCH):  # what the interpreter runs inside is no launch of its own
                return _real(self, *a, **k)

        cls.run = run
        patched.append((cls, real))
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            fn()
    finally:
        for cls, real in patched:
            cls.run = real

    def kernel(e) -> bool:
        return e.name.startswith("aten::") and e.name[6:] not in _NO_KERNEL

    def counted_parent(e) -> bool:
        p = e.cpu_parent
        while p is not None:
            if kernel(p) or p.name == _LAUNCH:
                return True
            p = p.cpu_parent
        return False

    return n[0], sum(1 for e in prof.events() if kernel(e) and not counted_parent(e))


def host_ms(fn, reps: int = 15) -> float:
    """Median host milliseconds of ``fn()`` with every Triton launch stubbed out (returns at once): the Python, dispatch
    and table-building cost a GPU run pays per call too (other ops run for real: on tiny widths, mostly overhead)."""
    from triton.runtime import interpreter, jit

    real = {cls: cls.run for cls in (jit.JITFunction, interpreter.InterpretedFunction)}
    for cls in real:
        cls.run = lambda self, *a, **k: None
    try:
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    finally:
        for cls, run in real.items():
            cls.run = run
    return 1e3 * sorted(times)[len(times) // 2]


def launch_counts(kinds: list[Kind], providers: list[str], dtype, device: str, shape: str) -> list[tuple]:
    """Rows (shape, mode, provider, Triton launches, other kernels, total, host ms) for forward and fwd+bwd."""
    problem = Problem(kinds, dtype, device)
    rows = []
    for p in providers:
        if p == "official+compile":
            continue  # inductor's kernels are not aten ops: not counted here
        for mode in ("forward", "fwd+bwd"):
            fn = step_fn(problem, p, mode)
            fn()  # warm: compiles, autotuning, the backend's first load
            tri, other = count_launches(fn)
            host = host_ms(fn) if device == "cpu" else float("nan")
            rows.append((shape, mode, p, tri, other, tri + other, round(host, 2)))
    return rows


# ------------------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only check the official provider against the fixtures")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    ap.add_argument("--shapes", default=None, help="comma list of bert, llama, llama-xl, or all")
    ap.add_argument("--providers", default=None, help="comma-separated: " + ",".join(PROVIDERS))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds per provider (default 10 cuda / 3 cpu)")
    ap.add_argument("--quick", action="store_true", help="quick shapes (CPU smoke run)")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (a dry run's plumbing: seconds on a CPU)")
    ap.add_argument("--out", default=None, help="append a markdown table to this file")
    ap.add_argument("--jsonl", default=None, help="append every row (and check) as a JSON line to this file")
    ap.add_argument("--mem-fraction", type=float, default=0.85, help="skip a shape needing more of the GPU's memory")
    ap.add_argument(
        "--count-launches",
        action="store_true",
        help="count kernel launches of forward and fwd+bwd, no "
        "timing: the shapes' layer counts, widths / 32 (the counts do not depend on the widths)",
    )
    args = ap.parse_args(argv)
    if args.check:
        return run_check()
    if args.count_launches:
        return main_count(args, argv)

    device = args.device
    dtype_name = args.dtype or ("bfloat16" if device == "cuda" else "float32")
    dtype = DTYPES[dtype_name]
    args.rounds = args.rounds or (10 if device == "cuda" else 3)
    shapes = args.shapes or ("all" if device == "cuda" else "bert")
    chosen = list(SHAPES) if shapes == "all" else shapes.split(",")
    providers = (args.providers or ",".join(PROVIDERS)).split(",")
    if device != "cuda" and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        providers = [p for p in providers if p not in TRITON]
    if "torch" not in providers:
        providers.append("torch")  # the agreement reference
    modes = args.modes.split(",")
    tol = TOLERANCE[dtype_name]

    def record(**row) -> None:
        if args.jsonl:
            with open(args.jsonl, "a") as f:
                f.write(json.dumps({"section": "expand", "dtype": dtype_name, "device": device, **row}) + "\n")

    t, bw = measure_ceilings(dtype, device)
    ceil_note = f"measured here: {dtype_name} matmul {t:.1f} TFLOP/s, copy {bw:.0f} GB/s"
    print(ceil_note, flush=True)
    record(kind="ceilings", tflops=t, gbs=bw, name=device_name(device))

    rows, status = [], 0
    for name in chosen:
        kinds = module_kinds(SHAPES[name](args.quick or args.tiny))
        if args.tiny:
            kinds = [tiny_kind(m) for m in kinds]
        need, have = needed_bytes(kinds, dtype.itemsize), device_memory(device)
        if have is not None and need > args.mem_fraction * have:
            msg = f"{name}: skipped, fwd+bwd needs up to ~{need / 2**30:.0f} GiB of the {have / 2**30:.0f} GiB here"
            print(msg, flush=True)
            record(kind="skip", shape=name, note=msg)
            continue
        try:
            problem = Problem(kinds, dtype, device)
        except Exception as e:  # noqa: BLE001 - e.g. out of memory: the next shape may still run
            print(f"{name}: inputs failed: {type(e).__name__}: {e}", flush=True)
            record(kind="skip", shape=name, note=f"inputs failed: {type(e).__name__}")
            status = 1
            continue
        agree = check_agreement(problem, providers, tol)
        for p, r in agree.items():
            verdict = "ok" if r["ok"] else ("FAILED" if r["error"] else "DIFFERS")
            what = r["error"] or f"worst rel. difference {r['rel']:.2e} ({r['kind']}), tolerance {tol:.0e}"
            print(f"{name}: {label(p, dtype_name)} vs torch path, per module kind: {verdict}: {what}", flush=True)
            record(kind="check", shape=name, provider=p, label=label(p, dtype_name), ok=r["ok"], rel=r["rel"],
                   where=r["kind"], tol=tol, error=r["error"])  # fmt: skip
            status |= 0 if r["ok"] else 1
        timed = [p for p in providers if p == "torch" or agree[p]["ok"]]
        for mode in modes:
            fl = sum(flops(m, mode) for m in kinds)
            nbytes = sum(bytes_moved(m, dtype.itemsize, mode) for m in kinds)
            res = time_mode(problem, timed, mode, args)
            eager = res["official"][0].median if "official" in res else None
            comp = res["official+compile"][0].median if "official+compile" in res else None
            for p, (st, peak) in res.items():
                med, p20, p80 = st.median * 1e3, st.p20 * 1e3, st.p80 * 1e3
                tf = fl / med / 1e9
                roof_ms = max(fl / (t * 1e9), nbytes / (bw * 1e6))
                row = (name, dtype_name, mode, label(p, dtype_name), med, p20, p80, tf, 100 * tf / t,
                       100 * roof_ms / med, peak, eager * 1e3 / med if eager else float("nan"),
                       comp * 1e3 / med if comp else float("nan"))  # fmt: skip
                rows.append(row)
                print(_fmt_row(row), flush=True)
                record(kind="time", shape=name, mode=mode, provider=p, label=row[3], median_ms=med, p20_ms=p20,
                       p80_ms=p80, tflops=tf, pct_peak=row[8], roof_pct=row[9], peak_extra_mib=peak,
                       x_eager=row[11], x_compile=row[12], ok=p == "torch" or agree[p]["ok"])  # fmt: skip
            status |= 0 if len(res) == len(timed) else 1
        del problem
        if device == "cuda":
            torch.cuda.empty_cache()

    head = run_header(f"bench_expand, {dtype_name}{', quick' if args.quick else ''}", device, "bench_expand.py", argv)
    text = "\n".join(
        head
        + [
            "",
            "FLOPs counted explicitly (cheaper association, identity blocks free), the same for every provider; "
            f"% peak against the measured matmul rate; roof% = roofline time / measured time. {ceil_note}",
            "",
            _table(rows),
        ]
    )
    print("\n" + text)
    append_markdown(args.out, text)
    return status


def tiny_kind(m: Kind, keep: bool = False) -> Kind:
    """A dry run's version of a module kind: 2 -> 3 layers, widths divided by 32 (at least 2 -> 3), one copy.
    ``keep``: its layer counts and copies kept (what the launch counts depend on)."""

    def d(x: int) -> int:
        return 0 if x == 0 else max(2, x // 32)

    o1, i1 = d(m.o1), d(m.i1)
    layers = dict(L1=m.L1, L2=m.L2, count=m.count) if keep else dict(L1=2, L2=3)
    return Kind(m.name, o1=o1, o2=max(o1 + 1, d(m.o2)), i1=i1, i2=0 if m.i1 == 0 else max(i1 + 1, d(m.i2)), **layers)


def main_count(args, argv) -> int:
    """``--count-launches``: kernel launches per provider of each shape's whole-model forward and fwd+bwd."""
    device = args.device
    dtype_name = args.dtype or "float32"
    providers = [p for p in (args.providers or ",".join(PROVIDERS)).split(",")]
    if device != "cuda" and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        providers = [p for p in providers if p not in TRITON]
    rows = []
    for name in (args.shapes or "bert").split(","):
        kinds = [tiny_kind(m, keep=True) for m in module_kinds(SHAPES[name](False))]
        for row in launch_counts(kinds, providers, DTYPES[dtype_name], device, name):
            rows.append(row)
            print("| " + " | ".join(map(str, row)) + " |", flush=True)
            if args.jsonl:
                with open(args.jsonl, "a") as f:
                    keys = ("shape", "mode", "provider", "triton_launches", "other_kernels", "total", "host_ms")
                    f.write(json.dumps({"section": "expand", "kind": "launches", **dict(zip(keys, row, strict=True))})
                            + "\n")  # fmt: skip
    head = run_header(f"bench_expand launch counts, {dtype_name}", device, "bench_expand.py", argv)
    table = "| shapes | mode | provider | Triton launches | other kernels | total | host ms, Triton stubbed |\n"
    table += "|---|---|---|---:|---:|---:|---:|\n"
    table += "\n".join("| " + " | ".join(map(str, r)) + " |" for r in rows) + "\n"
    note = ("Whole model, every module kind (layer counts and copies as in the shape, widths / 32). Other kernels: "
            "aten ops that launch one (torch.profiler's CPU events; see count_launches). Host ms: the median time of "
            "one call on this CPU with the Triton launches stubbed out (host_ms; CPU only; noisy on a shared "
            "machine).")  # fmt: skip
    text = "\n".join(head + ["", note, "", table])
    print("\n" + text)
    append_markdown(args.out, text)
    return 0


def _fmt_row(r) -> str:
    model, dt, mode, p, med, p20, p80, tf, pct, roof, peak, x_eager, x_comp = r

    def x(v):
        return "-" if v != v else f"{v:.2f}x"

    mem = "-" if peak != peak else f"{peak:.0f}"
    times = f"{med:.3f} | {p20:.3f} | {p80:.3f}"
    return (
        f"| {model} | {dt} | {mode} | {p} | {times} | {tf:.2f} | {pct:.1f} | {roof:.1f} | {mem} | {x(x_eager)} | "
        f"{x(x_comp)} |"
    )


def _table(rows) -> str:
    head = (
        "| shapes | dtype | mode | provider | median ms | p20 ms | p80 ms | TFLOP/s | % peak | roof% | peak extra MiB |"
        " x eager official | x official+compile |\n|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    return head + "\n".join(_fmt_row(r) for r in rows) + "\n"


if __name__ == "__main__":
    sys.exit(main())
