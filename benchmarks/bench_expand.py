"""Benchmark the LiGO growth operator's weight production on whole models: numbers, not tests.

Providers, side by side in one run:

* ``official``: the official LiGO code's math (``common.official_weight``), one module per large layer: the
  depth mix as an elementwise product with (out, in, L1)-stacked weights summed over the last axis, then
  ``cat`` growing the input dimension first, then the output dimension.
* ``official+compile``: ``torch.compile`` of that per-layer function (one graph per shape, reused by every
  layer and module kind of that shape).
* ``torch``: ``ligo_expand(backend="torch")`` (the pure-PyTorch path; one call per module kind, all layers).
* ``triton``: ``ligo_expand(backend="triton")`` (GPU only; the interpreter is no benchmark).

Shapes (``common.SHAPES``, every block tensor of the model: ``common.module_kinds``): ``bert`` (6L/512H ->
12L/768H: q, k, v, attn-out, ffn-in, ffn-out weights, their biases, 2 LayerNorms), ``llama`` (8L/512H ->
16L/1024H, GQA) and ``llama-xl`` (16L/2048H -> 32L/4096H, the roofline shape), all with RMSNorm weights.
Width matrices are per layer. FLOPs are counted explicitly (``flops``): the cheaper association order,
identity blocks free, the same count for every provider, so TFLOP/s compares times.

Timing (``common.time_interleaved``): forward and fwd+bwd interleave the providers round by round; backward
(gradients through a retained graph) times one provider at a time so that only one graph is alive.

    python benchmarks/bench_expand.py --device cuda --dtype bfloat16 --shapes all --out benchmarks/RESULTS.md
    python benchmarks/bench_expand.py --device cpu --quick
    python benchmarks/bench_expand.py --check       # the official provider against the official fixtures
"""

from __future__ import annotations

import argparse
import sys

import torch
from common import (
    DTYPES,
    SHAPES,
    Kind,
    append_markdown,
    module_kinds,
    official_weight,
    run_check,
    run_header,
    time_interleaved,
)

from ligo_fast import ops

MODES = ("forward", "backward", "fwd+bwd")
PEAK_TFLOPS = {"bfloat16": 790.0, "float16": 790.0, "float32": 67.0}  # H200: measured bf16, datasheet fp32


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
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype).requires_grad_(True)

    if m.i1 == 0:
        W = rnd(m.L1, m.o1)
        Ei = None
    else:
        W = rnd(m.L1, m.o1, m.i1)
        Ei = rnd(m.L2, m.i2 - m.i1, m.i1, scale=m.i1**-0.5)
    depth = rnd(m.L2, m.L1, scale=m.L1**-0.5)
    Eo = rnd(m.L2, m.o2 - m.o1, m.o1, scale=m.o1**-0.5)
    return W, depth, Eo, Ei


class Problem:
    """All module kinds of one model, with inputs laid out for each provider."""

    def __init__(self, kinds: list[Kind], dtype, device):
        self.kinds = kinds
        self.inputs = []  # per module kind (count copies): (W, depth, E_out, E_in, W_stacked)
        for k, m in enumerate(kinds):
            for c in range(m.count):
                W, depth, Eo, Ei = make_inputs(m, dtype, device, seed=1000 * k + c)
                W_st = W.detach().movedim(0, -1).contiguous().requires_grad_(True)  # official layout, set up once
                self.inputs.append((m, W, depth, Eo, Ei, W_st))

    def leaves(self, provider: str) -> list[torch.Tensor]:
        out = []
        for _, W, depth, Eo, Ei, W_st in self.inputs:
            out += [W_st if provider.startswith("official") else W, depth, Eo] + ([] if Ei is None else [Ei])
        return out

    def forward(self, provider: str) -> list[torch.Tensor]:
        outs = []
        layer_fn = _layer_fn(provider)
        for m, W, depth, Eo, Ei, W_st in self.inputs:
            if provider.startswith("official"):
                for ll in range(m.L2):
                    outs.append(layer_fn(W_st, depth[ll], Eo[ll], None if Ei is None else Ei[ll]))
            elif Ei is None:
                outs.append(ops.ligo_expand_vec(W, depth, Eo, backend=provider))
            else:
                outs.append(ops.ligo_expand(W, depth, Eo, Ei, backend=provider))
        return outs


_compiled = {}


def _layer_fn(provider: str):
    if provider != "official+compile":
        return official_weight
    if not _compiled:
        for name in ("recompile_limit", "cache_size_limit"):  # one graph per shape and grad mode
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 64)
        _compiled["fn"] = torch.compile(official_weight, dynamic=False)
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
    outs = problem.forward(provider)
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(o.shape, generator=gen).to(o.device, o.dtype) for o in outs]
    if mode == "backward":
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

    def prepare(p: str):
        try:
            fn = step_fn(problem, p, mode)
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


def check_agreement(problem: Problem, providers: list[str]) -> dict[str, float]:
    """Relative difference of each provider's outputs from ``torch`` (catches a benchmark of wrong code)."""
    with torch.no_grad():
        ref = problem.forward("torch")
        flat_ref = torch.cat([r.reshape(-1).float() for r in ref])
        out = {}
        for p in providers:
            if p == "torch":
                continue
            o = problem.forward(p)
            if p.startswith("official"):  # per layer -> stacked per module kind
                it = iter(o)
                o = [torch.stack([next(it) for _ in range(m.L2)]) for m, *_ in problem.inputs]
            flat = torch.cat([x.reshape(-1).float() for x in o])
            out[p] = ((flat - flat_ref).norm() / flat_ref.norm()).item()
    return out


def measure_ceilings(dtype) -> tuple[float, float]:
    """Measured bf16/fp32 matmul TFLOP/s (8192^3) and device copy GB/s (1 GiB, read + write) on this GPU."""
    a = torch.randn(8192, 8192, device="cuda", dtype=dtype)
    b = torch.randn(8192, 8192, device="cuda", dtype=dtype)
    s = time_interleaved({"mm": lambda: a @ b}, "cuda", rounds=5, min_sample_s=0.05)["mm"].median
    tflops = 2 * 8192**3 / s / 1e12
    x = torch.randn(2**28, device="cuda")
    y = torch.empty_like(x)
    s = time_interleaved({"copy": lambda: y.copy_(x)}, "cuda", rounds=5, min_sample_s=0.05)["copy"].median
    gbs = 2 * x.numel() * 4 / s / 1e9
    return tflops, gbs


# ------------------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only check the official provider against the fixtures")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    ap.add_argument("--shapes", default=None, help="comma list of bert, llama, llama-xl, or all")
    ap.add_argument("--providers", default=None, help="comma-separated: official,official+compile,torch,triton")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds per provider (default 10 cuda / 3 cpu)")
    ap.add_argument("--quick", action="store_true", help="quick shapes (CPU smoke run)")
    ap.add_argument("--out", default=None, help="append a markdown table to this file")
    args = ap.parse_args(argv)
    if args.check:
        return run_check()

    device = args.device
    dtype_name = args.dtype or ("bfloat16" if device == "cuda" else "float32")
    dtype = DTYPES[dtype_name]
    args.rounds = args.rounds or (10 if device == "cuda" else 3)
    shapes = args.shapes or ("all" if device == "cuda" else "bert")
    chosen = list(SHAPES) if shapes == "all" else shapes.split(",")
    providers = (args.providers or "official,official+compile,torch,triton").split(",")
    if device != "cuda":
        providers = [p for p in providers if p != "triton"]
    modes = args.modes.split(",")

    ceil_note = ""
    peak_tflops = PEAK_TFLOPS.get(dtype_name) if device == "cuda" else None
    bw = None
    if device == "cuda":
        t, bw = measure_ceilings(dtype)
        ceil_note = f"measured here: {dtype_name} matmul {t:.0f} TFLOP/s, copy {bw:.0f} GB/s"
        print(ceil_note, flush=True)

    rows = []
    for name in chosen:
        kinds = module_kinds(SHAPES[name](args.quick))
        problem = Problem(kinds, dtype, device)
        agree = check_agreement(problem, providers)
        print(f"{name}: rel. difference from torch path: {agree}", flush=True)
        for mode in modes:
            fl = sum(flops(m, mode) for m in kinds)
            nbytes = sum(bytes_moved(m, dtype.itemsize, mode) for m in kinds)
            res = time_mode(problem, providers, mode, args)
            base = res["official"][0].median if "official" in res else None
            for p, (st, peak) in res.items():
                med, p20, p80 = st.median * 1e3, st.p20 * 1e3, st.p80 * 1e3
                tf = fl / med / 1e9
                pct = f"{100 * tf / peak_tflops:.1f}" if peak_tflops else "-"
                roof = "-"
                if peak_tflops and bw:
                    roof_ms = max(fl / (peak_tflops * 1e9), nbytes / (bw * 1e6))
                    roof = f"{100 * roof_ms / med:.1f}"
                speed = base * 1e3 / med if base else float("nan")
                row = (name, dtype_name, mode, p, med, p20, p80, tf, pct, roof, peak, speed)
                rows.append(row)
                print(_fmt_row(row), flush=True)
        del problem

    head = run_header(f"bench_expand, {dtype_name}{', quick' if args.quick else ''}", device, "bench_expand.py", argv)
    text = "\n".join(
        head
        + [
            "",
            "FLOPs counted explicitly (cheaper association, identity blocks free), the same for every provider"
            + (
                f"; % peak against {peak_tflops} TFLOP/s; roof% = roofline time / measured time. {ceil_note}"
                if peak_tflops
                else "."
            ),
            "",
            _table(rows),
        ]
    )
    print("\n" + text)
    append_markdown(args.out, text)
    return 0


def _fmt_row(r) -> str:
    model, dt, mode, p, med, p20, p80, tf, pct, roof, peak, speed = r
    mem = "-" if peak != peak else f"{peak:.0f}"
    sp = "-" if speed != speed else f"{speed:.2f}x"
    times = f"{med:.3f} | {p20:.3f} | {p80:.3f}"
    return f"| {model} | {dt} | {mode} | {p} | {times} | {tf:.2f} | {pct} | {roof} | {mem} | {sp} |"


def _table(rows) -> str:
    head = (
        "| shapes | dtype | mode | provider | median ms | p20 ms | p80 ms | TFLOP/s | % peak | roof% | peak extra MiB |"
        " vs official |\n|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    return head + "\n".join(_fmt_row(r) for r in rows) + "\n"


if __name__ == "__main__":
    sys.exit(main())
