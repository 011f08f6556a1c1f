"""Benchmark the LiGO growth operator on whole models: numbers, not tests.

Providers, side by side in one run:

* ``official``: the official LiGO code's eager math, one module per large layer: the depth mix as an
  elementwise product with (out, in, L1)-stacked weights summed over the last axis, then ``cat`` growing the
  input dimension first, then the output dimension.
* ``official+compile``: ``torch.compile`` of that per-layer function (one graph per shape, reused by every
  layer and module kind of that shape).
* ``torch``: ``ligo_fast.reference.expand_torch`` (one call per module kind, all layers at once).
* ``triton``: ``ligo_expand(backend="triton")`` (GPU only; the interpreter is no benchmark).

Shapes: every module kind of BERT 6L/512H -> 12L/768H (q, k, v, attn-out, ffn-in, ffn-out weights, their
biases, 2 LayerNorms' weight and bias) and Llama-like 16L/2048H -> 32L/4096H (q, k, v, o, gate, up, down).
Width matrices are per layer. FLOPs are counted explicitly (``flops``): the cheaper association order,
identity blocks free, the same count for every provider, so TFLOP/s compares times.

    python benchmarks/bench_expand.py --device cuda --dtype bfloat16 --shapes all --out benchmarks/RESULTS.md
    python benchmarks/bench_expand.py --device cpu --quick
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
from dataclasses import dataclass

import torch

from ligo_fast import reference

MODES = ("forward", "backward", "fwd+bwd")
PEAK_TFLOPS = {"bfloat16": 790.0, "float16": 790.0, "float32": 67.0}  # H200: measured bf16, datasheet fp32


@dataclass(frozen=True)
class Module:
    name: str
    L1: int
    L2: int
    o1: int
    o2: int
    i1: int = 0  # 0: a vector (bias, norm weight)
    i2: int = 0
    count: int = 1  # how many module kinds share this shape


def bert(quick: bool = False) -> list[Module]:
    L1, L2, h1, h2, f1, f2 = (2, 4, 128, 192, 512, 768) if quick else (6, 12, 512, 768, 2048, 3072)
    return [
        Module("qkvo", L1, L2, h1, h2, h1, h2, count=4),
        Module("ffn_in", L1, L2, f1, f2, h1, h2),
        Module("ffn_out", L1, L2, h1, h2, f1, f2),
        Module("bias_qkvo+ln", L1, L2, h1, h2, count=4 + 1 + 4),  # q,k,v,o,ffn-out biases; 2 LN weight+bias
        Module("bias_ffn_in", L1, L2, f1, f2),
    ]


def llama(quick: bool = False) -> list[Module]:
    L1, L2, h1, h2, f1, f2 = (2, 4, 256, 512, 704, 1376) if quick else (16, 32, 2048, 4096, 5632, 11008)
    return [
        Module("qkvo", L1, L2, h1, h2, h1, h2, count=4),
        Module("gate_up", L1, L2, f1, f2, h1, h2, count=2),
        Module("down", L1, L2, h1, h2, f1, f2),
    ]


def flops(m: Module, mode: str) -> float:
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


def bytes_moved(m: Module, itemsize: int, mode: str) -> float:
    """Fewest bytes: inputs read once, outputs written once (gradient of the output read once in backward)."""
    i1, i2 = max(m.i1, 1), max(m.i2, 1)
    ins = m.L1 * m.o1 * i1 + m.L2 * ((m.o2 - m.o1) * m.o1 + (i2 - i1) * i1) + m.L2 * m.L1
    out = m.L2 * m.o2 * i2
    fwd = (ins + out) * itemsize
    bwd = (out + 2 * ins) * itemsize
    return m.count * {"forward": fwd, "backward": bwd, "fwd+bwd": fwd + bwd}[mode]


# -------------------------------------------------------------------------------------------- providers


def make_inputs(m: Module, dtype, device, seed: int):
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


def official_layer(W_st, coeff, E_out, E_in):
    """The official LiGO code's math for one module of one large layer. W_st: (out, in, L1) or (out, L1)."""
    w = (W_st * coeff).sum(-1)
    if w.dim() == 1:
        return torch.cat([w, E_out @ w], 0)
    w = torch.cat([w, w @ E_in.t()], 1)
    return torch.cat([w, E_out @ w], 0)


class Problem:
    """All module kinds of one model, with inputs laid out for each provider."""

    def __init__(self, modules: list[Module], dtype, device):
        self.modules = modules
        self.inputs = []  # per module kind (count copies): (W, depth, E_out, E_in, W_stacked)
        for k, m in enumerate(modules):
            for c in range(m.count):
                W, depth, Eo, Ei = make_inputs(m, dtype, device, seed=1000 * k + c)
                W_st = W.detach().movedim(0, -1).contiguous().requires_grad_(True)  # official layout, set up once
                self.inputs.append((m, W, depth, Eo, Ei, W_st))

    def leaves(self, provider: str) -> list[torch.Tensor]:
        out = []
        for _, W, depth, Eo, Ei, W_st in self.inputs:
            out += [W_st if provider.startswith("official") else W, depth, Eo] + ([] if Ei is None else [Ei])
        return out

    def forward(self, provider: str, layer_fn=None) -> list[torch.Tensor]:
        outs = []
        for m, W, depth, Eo, Ei, W_st in self.inputs:
            if provider.startswith("official"):
                for ll in range(m.L2):
                    outs.append(layer_fn(W_st, depth[ll], Eo[ll], None if Ei is None else Ei[ll]))
            elif provider == "torch":
                if Ei is None:
                    outs.append(reference.expand_vec_torch(W, depth, Eo))
                else:
                    outs.append(reference.expand_torch(W, depth, Eo, Ei))
            else:
                from ligo_fast import ops

                if Ei is None:
                    outs.append(ops.ligo_expand_vec(W, depth, Eo, backend="triton"))
                else:
                    outs.append(ops.ligo_expand(W, depth, Eo, Ei, backend="triton"))
        return outs


_compiled = {}


def _layer_fn(provider: str):
    if provider != "official+compile":
        return official_layer
    if not _compiled:
        for name in ("recompile_limit", "cache_size_limit"):  # one graph per shape and grad mode
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 64)
        _compiled["fn"] = torch.compile(official_layer, dynamic=False)
    return _compiled["fn"]


# ---------------------------------------------------------------------------------------------- timing


def _quantiles(times_ms: list[float]) -> tuple[float, float, float]:
    t = torch.tensor(times_ms, dtype=torch.float64)
    q = torch.quantile(t, torch.tensor([0.5, 0.2, 0.8], dtype=torch.float64))
    return tuple(q.tolist())


def time_fn(fn, device: str, quick: bool) -> tuple[float, float, float]:
    """(median, p20, p80) in ms."""
    if device == "cuda":
        import triton.testing

        warmup, rep = (25, 100) if quick else (50, 300)
        return tuple(triton.testing.do_bench(fn, warmup=warmup, rep=rep, quantiles=[0.5, 0.2, 0.8]))
    import time

    import torch.utils.benchmark as tb

    t0 = time.perf_counter()
    fn()
    once = time.perf_counter() - t0
    if once > 0.5:  # slow CPU cases: two more single runs keep the whole CPU benchmark within minutes
        times = [once]
        for _ in range(2):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return _quantiles([t * 1e3 for t in times])
    m = tb.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=0.2 if quick else 1.0)
    return _quantiles([t * 1e3 for t in m.times])


def run_case(problem: Problem, provider: str, mode: str, device: str, quick: bool):
    """Time one provider in one mode; return (median, p20, p80) ms and the peak extra memory (MiB, GPU)."""
    layer_fn = _layer_fn(provider)
    leaves = problem.leaves(provider)
    if mode == "forward":

        def fn():
            with torch.no_grad():
                return problem.forward(provider, layer_fn)

    else:
        outs = problem.forward(provider, layer_fn)
        grads = [torch.randn_like(o) for o in outs]
        if mode == "backward":

            def fn():
                return torch.autograd.grad(outs, leaves, grads, retain_graph=True)

        else:
            del outs

            def fn():
                o = problem.forward(provider, layer_fn)
                return torch.autograd.grad(o, leaves, grads)

    fn()  # compile / autotune / warm caches outside the timing
    if device != "cuda":
        return time_fn(fn, device, quick), float("nan")
    peak = float("nan")
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        res = fn()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        del res
    return time_fn(fn, device, quick), peak


def check_agreement(problem: Problem, providers: list[str]) -> dict[str, float]:
    """Relative difference of each provider's outputs from ``torch`` (catches a benchmark of wrong code)."""
    with torch.no_grad():
        ref = problem.forward("torch")
        flat_ref = torch.cat([r.reshape(-1).float() for r in ref])
        out = {}
        for p in providers:
            if p == "torch":
                continue
            o = problem.forward(p, _layer_fn(p))
            if p.startswith("official"):  # per layer -> stacked per module kind
                it = iter(o)
                o = [torch.stack([next(it) for _ in range(m.L2)]) for m, *_ in problem.inputs]
            flat = torch.cat([x.reshape(-1).float() for x in o])
            out[p] = ((flat - flat_ref).norm() / flat_ref.norm()).item()
    return out


def measure_ceilings(dtype) -> tuple[float, float]:
    """Measured bf16/fp32 matmul TFLOP/s (8192^3) and device copy GB/s (1 GiB, read + write) on this GPU."""
    import triton.testing

    a = torch.randn(8192, 8192, device="cuda", dtype=dtype)
    b = torch.randn(8192, 8192, device="cuda", dtype=dtype)
    ms = triton.testing.do_bench(lambda: a @ b, warmup=25, rep=100)
    tflops = 2 * 8192**3 / ms / 1e9
    x = torch.randn(2**28, device="cuda")
    y = torch.empty_like(x)
    ms = triton.testing.do_bench(lambda: y.copy_(x), warmup=25, rep=100)
    gbs = 2 * x.numel() * 4 / ms / 1e6
    return tflops, gbs


# ------------------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    ap.add_argument("--shapes", choices=["bert", "llama", "all"], default=None)
    ap.add_argument("--providers", default=None, help="comma-separated: official,official+compile,torch,triton")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--quick", action="store_true", help="small shapes and short timing (CPU smoke run)")
    ap.add_argument("--out", default=None, help="append a markdown table to this file")
    args = ap.parse_args(argv)

    device = args.device
    dtype_name = args.dtype or ("bfloat16" if device == "cuda" else "float32")
    dtype = getattr(torch, dtype_name)
    shapes = args.shapes or ("all" if device == "cuda" else "bert")
    providers = (args.providers or "official,official+compile,torch,triton").split(",")
    if device != "cuda":
        providers = [p for p in providers if p != "triton"]
    modes = args.modes.split(",")
    models = {"bert": bert(args.quick), "llama": llama(args.quick)}
    chosen = list(models) if shapes == "all" else [shapes]

    ceil_note = ""
    peak_tflops = PEAK_TFLOPS.get(dtype_name) if device == "cuda" else None
    bw = None
    if device == "cuda":
        t, bw = measure_ceilings(dtype)
        ceil_note = f"measured here: {dtype_name} matmul {t:.0f} TFLOP/s, copy {bw:.0f} GB/s"
        print(ceil_note, flush=True)

    rows = []
    for model in chosen:
        problem = Problem(models[model], dtype, device)
        agree = check_agreement(problem, providers)
        print(f"{model}: rel. difference from torch path: {agree}", flush=True)
        for mode in modes:
            fl = sum(flops(m, mode) for m in models[model])
            nbytes = sum(bytes_moved(m, dtype.itemsize, mode) for m in models[model])
            base = None
            for p in providers:
                try:
                    (med, p20, p80), peak = run_case(problem, p, mode, device, args.quick)
                except Exception as e:  # noqa: BLE001 - a provider that cannot run is reported, not fatal
                    print(f"{model} {mode} {p}: failed: {type(e).__name__}: {e}", flush=True)
                    continue
                if p == "official":
                    base = med
                tf = fl / med / 1e9
                pct = f"{100 * tf / peak_tflops:.1f}" if peak_tflops else "-"
                roof = "-"
                if peak_tflops and bw:
                    roof_ms = max(fl / (peak_tflops * 1e9), nbytes / (bw * 1e6))
                    roof = f"{100 * roof_ms / med:.1f}"
                row = (model, mode, p, med, p20, p80, tf, pct, roof, peak, base / med if base else float("nan"))
                rows.append(row)
                print(_fmt_row(row), flush=True)
            if device == "cuda":
                torch.cuda.empty_cache()
        del problem

    table = _table(rows)
    header = (
        f"### bench_expand {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} · "
        f"{torch.cuda.get_device_name() if device == 'cuda' else platform.processor() or platform.machine()} · "
        f"{dtype_name} · torch {torch.__version__} · triton {_triton_version()} · python {sys.version.split()[0]}"
        f"{' · quick' if args.quick else ''}\n\n"
        f"FLOPs counted explicitly (cheaper association, identity blocks free), the same for every provider; "
        f"% peak against {peak_tflops} TFLOP/s; roof% = roofline time / measured time. {ceil_note}\n\n"
    )
    print("\n" + header + table)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + header + table + "\n")
    return 0


def _triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return "n/a"


def _fmt_row(r) -> str:
    model, mode, p, med, p20, p80, tf, pct, roof, peak, speed = r
    mem = "-" if peak != peak else f"{peak:.0f}"
    sp = "-" if speed != speed else f"{speed:.2f}x"
    return f"| {model} | {mode} | {p} | {med:.3f} | {p20:.3f} | {p80:.3f} | {tf:.2f} | {pct} | {roof} | {mem} | {sp} |"


def _table(rows) -> str:
    head = (
        "| shapes | mode | provider | median ms | p20 ms | p80 ms | TFLOP/s | % peak | roof% | peak extra MiB |"
        " vs official |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    return head + "\n".join(_fmt_row(r) for r in rows) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
