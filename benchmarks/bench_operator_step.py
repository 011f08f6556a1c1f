"""Benchmark one operator-training step of LiGO against a plain training step of the large model: numbers, not tests.

A step = zero_grad + forward + backward of the loss w.r.t. the trained parameters + AdamW step. Providers,
side by side in one run (every LiGO provider grows the same small model with the same seed, so they hold
identical operators):

* ``official-eager``: the official code's math, written here from the model's slots: per module and per large
  layer an elementwise depth mix ``(W_stacked_last * coeffs).sum(-1)`` over (out, in, L1)-stacked weights, then
  ``cat`` growing the input dimension first, then the output dimension, then ``functional_call``. Checked once
  against ``model.produce()`` before timing.
* ``ours-eager``: ``grow(..., lean=False, linear_mode="materialize")``.
* ``ours-lean``: ``lean=True`` (per-layer production, recomputed in backward).
* ``ours-factored``: ``linear_mode="factored", lean=False``.
* ``ours-auto``: ``lean=None, linear_mode="auto"`` (the defaults a user would pick).
* ``plain-large``: the large HF model itself, all parameters trained with AdamW (the reference).

Shapes: BERT 6L/512H -> 12L/768H (BertForMaskedLM, FFN 2048 -> 3072, heads 8 -> 12) and a Llama-like decoder
8L/1024H -> 16L/2048H (SwiGLU 2816 -> 5632, heads 8 -> 16, GQA with KV heads 2 -> 4, head_dim 128). ``--quick``
shrinks both so a 2-core CPU finishes in minutes (see ``shapes``).

Timing: the providers of a shape run interleaved, round-robin, in a rotated order every round, so a burst of load
from other processes spreads over all of them instead of landing on one (torch.utils.benchmark times one
statement at a time). Per step: host clock on CPU, CUDA events on GPU. Median and 20/80 percentiles.

Peak memory: each provider in a fresh process (forkserver, torch/transformers/ligo_fast preloaded, nothing
built). GPU: ``max_memory_allocated`` over the measured step after ``reset_peak_memory_stats`` (includes the
model, its optimizer state and gradients). CPU: resident set size: the process' high-water mark (VmHWM) is reset
through ``/proc/self/clear_refs`` just before the measured step, and the peak is reported relative to the RSS the
process had before it built anything; glibc is told to mmap every allocation >= 128 KiB so that freed tensors
leave the RSS at once (otherwise retained heap hides growth). RSS counts pages, not tensors: small allocations,
allocator and library overheads are in it, and it is a few MiB coarse.

Cost model: break-even token counts of every block linear of both shapes (full and quick sizes) for the CPU and
H200 device models; the auto plan at the timed batch; and a check: one large layer's linear, fwd+bwd, in
materialize vs factored mode at a few token counts; does the model ever pick the slower mode by more than 10%?

    python benchmarks/bench_operator_step.py --device cpu --quick --out benchmarks/RESULTS.md
    python benchmarks/bench_operator_step.py --device cuda --batch 256 --seq 128 --out benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import multiprocessing as mp
import platform
import shlex
import statistics
import sys
import time
from functools import partial

import torch
import transformers
from torch.func import functional_call
from transformers import BertConfig, BertForMaskedLM, LlamaConfig, LlamaForCausalLM

import ligo_fast
from ligo_fast import ops
from ligo_fast.factored import CPU, H200, break_even_tokens, costs, device_model, factored_linear
from ligo_fast.reference import compute_dtype, depth_mix

PROVIDERS = ("official-eager", "ours-eager", "ours-lean", "ours-factored", "ours-auto", "plain-large")
OPTIONS = {
    "official-eager": dict(lean=False, linear_mode="materialize"),
    "ours-eager": dict(lean=False, linear_mode="materialize"),
    "ours-lean": dict(lean=True, linear_mode="materialize"),
    "ours-factored": dict(lean=False, linear_mode="factored"),
    "ours-auto": dict(lean=None, linear_mode="auto"),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MiB = 2**20


# ---------------------------------------------------------------------------------------------------- shapes
def shapes(name: str, quick: bool, vocab: int | None):
    """(HF class, small config, large config) of a benchmark shape; no dropout so providers can be compared."""
    if name == "bert":
        dims = (3, 6, 256, 384, 1024, 1536, 4, 6) if quick else (6, 12, 512, 768, 2048, 3072, 8, 12)
        L1, L2, h1, h2, f1, f2, a1, a2 = dims
        v = vocab or (2048 if quick else 30522)

        def cfg(L, h, f, a):
            return BertConfig(
                num_hidden_layers=L,
                hidden_size=h,
                intermediate_size=f,
                num_attention_heads=a,
                vocab_size=v,
                hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0,
            )

        return BertForMaskedLM, cfg(L1, h1, f1, a1), cfg(L2, h2, f2, a2)
    if name == "llama":
        # head_dim 64 (quick) / 128; KV heads a quarter of the heads (GQA) in both models
        dims = (2, 4, 256, 512, 704, 1408, 4, 8) if quick else (8, 16, 1024, 2048, 2816, 5632, 8, 16)
        L1, L2, h1, h2, f1, f2, a1, a2 = dims
        v = vocab or (2048 if quick else 32000)

        def cfg(L, h, f, a):
            return LlamaConfig(
                num_hidden_layers=L,
                hidden_size=h,
                intermediate_size=f,
                num_attention_heads=a,
                num_key_value_heads=max(a // 4, 1),
                vocab_size=v,
                max_position_embeddings=4096,
            )

        return LlamaForCausalLM, cfg(L1, h1, f1, a1), cfg(L2, h2, f2, a2)
    raise ValueError(name)


def block_linears(name: str, small, large) -> list[tuple[str, int, int, int, int, int]]:
    """(module kinds, o1, i1, o2, i2, L1) of every block linear, from the configs (cross-checked with the slots)."""
    h1, h2, L1 = small.hidden_size, large.hidden_size, small.num_hidden_layers
    f1, f2 = small.intermediate_size, large.intermediate_size
    if name == "bert":
        return [("q/k/v/attn-out", h1, h1, h2, h2, L1), ("ffn-in", f1, h1, f2, h2, L1), ("ffn-out", h1, f1, h2, f2, L1)]

    def dims(c):
        hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        return c.num_attention_heads * hd, c.num_key_value_heads * hd

    (q1, kv1), (q2, kv2) = dims(small), dims(large)
    return [
        ("q", q1, h1, q2, h2, L1),
        ("k/v", kv1, h1, kv2, h2, L1),
        ("o", h1, q1, h2, q2, L1),
        ("gate/up", f1, h1, f2, h2, L1),
        ("down", h1, f1, h2, f2, L1),
    ]


def slot_shapes(model) -> dict[str, tuple[int, int, int, int]]:
    """Block linear slots of a built LiGOModel: path -> (o1, i1, o2, i2)."""
    return {
        s.mod.path: (*s.view_w, *s.shape_w)
        for s in model._slots
        if s.layered and s.mod.kind == "linear" and len(s.shape_w) == 2
    }


# ---------------------------------------------------------------------------------------------------- official math
def _grow_vec(v, E):
    return v if E is None else torch.cat([v, E @ v])


def official_produce(m) -> dict:
    """The official code's production, per module and per large layer, from a LiGOModel's slots and tensors."""
    g = m.op.get
    out = {}
    for s in m._slots:
        if s.res_w is not None or s.mod.transposed or len(s.e_rows) != 1 or len(s.e_cols) != 1:
            raise NotImplementedError(f"official-eager here covers plain modules only, not {s.mod.path}")
        W = g(s.w)
        dt = W.dtype

        def width(name, l, dt=dt):
            E = g(name)
            if E is None:
                return None
            return (E[l] if E.dim() == 3 else E).to(dt)

        layers = range(m.L2) if s.layered else [None]
        Wlast = W.movedim(0, -1) if s.layered else None  # official layout: (out, in, L1) / (d, L1)
        for l, tgt in zip(layers, s.targets_w, strict=True):
            w = (Wlast * g(s.depth_w)[l].to(dt)).sum(-1) if s.layered else W
            if s.mod.kind == "norm":
                w = _grow_vec(w, width(s.e_rows[0], l))
            else:
                w = w.reshape(s.view_w)
                Ei, Eo = width(s.e_cols[0], l), width(s.e_rows[0], l)
                if Ei is not None:
                    w = torch.cat([w, w @ Ei.T], dim=1)  # input dimension first, as the official code
                if Eo is not None:
                    w = torch.cat([w, Eo @ w], dim=0)
            out[tgt] = w.reshape(s.shape_w)
        if s.b is not None:
            b = g(s.b)
            blast = b.movedim(0, -1) if s.layered else None
            es = s.e_rows if s.mod.kind != "embedding" else [None]
            for l, tgt in zip(layers, s.targets_b, strict=True):
                v = (blast * g(s.depth_b)[l].to(dt)).sum(-1) if s.layered else b
                out[tgt] = _grow_vec(v, width(es[0], l))
    for name, others in m._aliases.items():
        if name in out:
            for o in others:
                out[o] = out[name]
    return out


def check_official(m, dtype) -> float:
    """Max relative error (Frobenius, per tensor) of official_produce against model.produce(); raises if off."""
    with torch.no_grad():
        ours, off = m.produce(), official_produce(m)
    if set(ours) != set(off):
        raise AssertionError(f"official-eager produces other tensors: {sorted(set(ours) ^ set(off))[:5]}")
    worst = 0.0
    for k, v in ours.items():
        ref = v.double()
        err = ((off[k].double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()
        worst = max(worst, err)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    if not worst < tol:
        raise AssertionError(f"official-eager differs from model.produce(): relative error {worst:.2e} >= {tol}")
    return worst


# ---------------------------------------------------------------------------------------------------- providers
class Runner:
    """One provider: a model, its optimizer, the batch, and ``step()``."""

    def __init__(self, shape: str, provider: str, args, device: torch.device):
        dtype = DTYPES[args.dtype]
        cls, small_cfg, large_cfg = shapes(shape, args.quick, args.vocab)
        self.provider, self.notes = provider, ""
        gen = torch.Generator().manual_seed(1)
        self.ids = torch.randint(0, large_cfg.vocab_size, (args.batch, args.seq), generator=gen).to(device)
        torch.manual_seed(0)
        if provider == "plain-large":
            self.model = cls(large_cfg).to(device=device, dtype=dtype)
            self.forward = lambda: self.model(input_ids=self.ids, labels=self.ids)
        else:
            small = cls(small_cfg).to(device=device, dtype=dtype)
            self.model = ligo_fast.grow(small, large_cfg, seed=0, **OPTIONS[provider]).to(device=device, dtype=dtype)
            del small
            m = self.model
            if provider == "official-eager":
                self.notes = f"= produce() to {check_official(m, dtype):.0e}"

                def fwd():
                    kw = {"input_ids": self.ids, "labels": self.ids}
                    return functional_call(m.large, official_produce(m), (), kw, tie_weights=False)

                self.forward = fwd
            else:
                self.forward = lambda: m(input_ids=self.ids, labels=self.ids)
                with torch.enable_grad():
                    lean = m.lean_now()
                plan = {m._slots[i].mod.path for i in m.factored_plan((), {"input_ids": self.ids})}
                self.notes = f"lean={'on' if lean else 'off'}, factored {len(plan)}/{len(slot_shapes(m))} block linears"
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.n_params = sum(p.numel() for p in params)
        self.opt = torch.optim.AdamW(params, lr=1e-5)

    def loss_eval(self) -> float:
        with torch.no_grad():
            return self.forward().loss.float().item()

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss = self.forward().loss
        loss.backward()
        self.opt.step()


class Clock:
    """Seconds of one call: host clock on CPU (synchronous), CUDA events on GPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn) -> float:
        if not self.cuda:
            t = time.perf_counter()
            fn()
            return time.perf_counter() - t
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        return a.elapsed_time(b) / 1e3


def quantiles(xs: list[float]) -> tuple[float, float, float]:
    """(median, 20th, 80th percentile), linear interpolation."""
    s = sorted(xs)

    def q(p):
        k = p * (len(s) - 1)
        lo = int(k)
        hi = min(lo + 1, len(s) - 1)
        return s[lo] + (s[hi] - s[lo]) * (k - lo)

    return statistics.median(s), q(0.2), q(0.8)


# ---------------------------------------------------------------------------------------------------- memory
def _rss() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in bytes."""
    vals = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":")
                vals[k] = int(v.split()[0]) * 1024
    return vals["VmRSS"], vals["VmHWM"]


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux >= 4.0: reset the peak RSS to the current RSS
        return True
    except OSError:
        return False


def memory_child(shape: str, provider: str, args) -> dict:
    """In a fresh process: build one provider, 2 warm-up steps, then the peak memory of one more step."""
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
        try:  # M_MMAP_THRESHOLD = -3, M_TRIM_THRESHOLD = -1: big tensors come from mmap and go back at free
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-3, 128 * 1024)
            libc.mallopt(-1, 128 * 1024)
        except OSError:
            pass
        base, _ = _rss()
    r = Runner(shape, provider, args, device)
    for _ in range(2):
        r.step()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        r.step()
        torch.cuda.synchronize()
        return {"state": before, "peak": torch.cuda.max_memory_allocated(), "exact": True}
    exact = _reset_hwm()
    before, _ = _rss()
    r.step()
    _, hwm = _rss()
    if not exact:  # whole-process high-water mark: the build is in it too
        hwm = resource_hwm()
    return {"state": before - base, "peak": hwm - base, "exact": exact}


def resource_hwm() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _child_entry(q, shape, provider, args):
    try:
        q.put(memory_child(shape, provider, args))
    except Exception as e:  # report, do not hang the parent
        q.put({"error": f"{type(e).__name__}: {e}"})


def measure_memory(shape: str, args) -> dict[str, dict]:
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "transformers", "ligo_fast"])
    out = {}
    for p in PROVIDERS:
        q = ctx.Queue()
        proc = ctx.Process(target=_child_entry, args=(q, shape, p, args))
        proc.start()
        res = q.get()
        proc.join()
        out[p] = res
        if "error" in res:
            print(f"  memory {shape}/{p}: {res['error']}", file=sys.stderr)
    return out


# ---------------------------------------------------------------------------------------------------- cost model
def breakeven_table(quick: bool, vocab: int | None) -> list[str]:
    rows = [
        "| shape | module kinds | small (o1 x i1) | large (o2 x i2) | L1 | break-even tokens: CPU fp32 | H200 bf16 "
        "| H200 fp32 | auto at 256x128 on H200 bf16 |",
        "|---|---|---|---|---:|---:|---:|---:|---|",
    ]
    for q in sorted({False, quick}):
        for name in ("bert", "llama"):
            _, s, lg = shapes(name, q, vocab)
            label = f"{name}{' (quick)' if q else ''}"
            for kinds, o1, i1, o2, i2, L1 in block_linears(name, s, lg):
                be = [break_even_tokens(o1, i1, o2, i2, L1, nb, dev) for dev, nb in ((CPU, 4), (H200, 2), (H200, 4))]
                m, f = costs(256 * 128, o1, i1, o2, i2, L1, 2, H200)
                pick = "factored" if f < m else "materialize"
                bes = ["never" if b is None else str(b) for b in be]
                rows.append(f"| {label} | {kinds} | {o1}x{i1} | {o2}x{i2} | {L1} | {' | '.join(bes)} | {pick} |")
    return rows


def _wmix(W, depth):
    """The depth-mixed small weight of one layer, as ``model._factored_modules`` computes it."""
    ct = compute_dtype(W.dtype)
    return depth_mix(W.to(ct), depth.to(ct))[0]


def _linear_step(mode: str, x, W, depth, Eo, Ei, gy):
    """fwd+bwd of one large layer's linear, with gradients for x and every operator tensor."""
    if mode == "materialize":
        w = ops.ligo_expand(W, depth, Eo, Ei)[0]
        y = torch.nn.functional.linear(x, w)
    else:
        y = factored_linear(x, _wmix(W, depth), Eo, Ei, None, None)
    y.backward(gy)
    for t in (x, W, depth, Eo, Ei):
        t.grad = None


def cost_model_check(name: str, args, device: torch.device) -> tuple[list[str], int]:
    """Rows of the micro-benchmark and the number of wrong picks (picked mode > 1.10x the faster one)."""
    dtype = DTYPES[args.dtype]
    dev = device_model(device)
    nbytes = torch.tensor([], dtype=dtype).element_size()
    _, s, lg = shapes(name, args.quick, args.vocab)
    clock = Clock(device)
    rows, wrong = [], 0
    gen = torch.Generator().manual_seed(2)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype).requires_grad_(True)

    for kinds, o1, i1, o2, i2, L1 in block_linears(name, s, lg):
        be = break_even_tokens(o1, i1, o2, i2, L1, nbytes, dev)
        tokens = set(args.micro_tokens)
        if be is not None:
            tokens |= {max(be // 2, 1), be * 2}
        tokens = sorted(t for t in tokens if t <= args.micro_max_tokens)
        W = rnd(L1, o1, i1, scale=i1**-0.5)
        # in the model's dtype, as after LiGOModel.to(dtype)
        depth = torch.softmax(torch.rand(1, L1, generator=gen), -1).to(device, dtype).requires_grad_(True)
        Eo = torch.softmax(torch.rand(o2 - o1, o1, generator=gen), -1).to(device, dtype).requires_grad_(True)
        Ei = torch.softmax(torch.rand(i2 - i1, i1, generator=gen), -1).to(device, dtype).requires_grad_(True)
        for T in tokens:
            x, gy = rnd(T, i2), rnd(T, o2).detach()
            # same function in both modes: check once
            with torch.no_grad():
                ym = torch.nn.functional.linear(x, ops.ligo_expand(W, depth, Eo, Ei)[0])
                yf = factored_linear(x, _wmix(W, depth), Eo, Ei, None, None)
                err = ((ym.double() - yf.double()).norm() / ym.double().norm()).item()
            assert err < (1e-4 if dtype == torch.float32 else 3e-2), (kinds, T, err)
            fns = {m: partial(_linear_step, m, x, W, depth, Eo, Ei, gy) for m in ("materialize", "factored")}
            times = {m: [] for m in fns}
            if device.type == "cuda":
                import triton.testing

                for m, fn in fns.items():
                    times[m] = [triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median") / 1e3]
            else:
                for fn in fns.values():
                    fn()  # warm-up
                for _ in range(args.micro_repeats):  # interleaved, like the step timing
                    for m, fn in fns.items():
                        times[m].append(clock(fn))
            med = {m: statistics.median(v) for m, v in times.items()}
            cm, cf = costs(T, o1, i1, o2, i2, L1, nbytes, dev)
            pick = "factored" if cf < cm else "materialize"
            other = "materialize" if pick == "factored" else "factored"
            ratio = med[pick] / med[other]
            bad = ratio > 1.10
            wrong += bad
            rows.append(
                f"| {name} | {kinds} | {T} | {med['materialize'] * 1e3:.2f} | {med['factored'] * 1e3:.2f} | "
                f"{cm * 1e3:.3f} / {cf * 1e3:.3f} | {pick} | {ratio:.2f} | {'**WRONG**' if bad else 'ok'} |"
            )
    return rows, wrong


# ---------------------------------------------------------------------------------------------------- main
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} thread(s)"


def run_shape(shape: str, args, device: torch.device, mem: dict | None) -> tuple[list[str], list[str]]:
    clock = Clock(device)
    runners = {p: Runner(shape, p, args, device) for p in PROVIDERS}
    # the LiGO providers hold the same operator: same weights, same loss (no dropout in these configs)
    ref = runners["ours-eager"].loss_eval()
    for p, r in runners.items():
        if p != "plain-large":
            loss = r.loss_eval()
            assert abs(loss - ref) <= (1e-4 if args.dtype == "float32" else 5e-2) * abs(ref), (p, loss, ref)
    auto = runners["ours-auto"].model
    cands = slot_shapes(auto)
    plan = {auto._slots[i].mod.path for i in auto.factored_plan((), {"input_ids": runners["ours-auto"].ids})}
    # the analytic shapes (break-even table, cost-model check) must be the model's
    _, small_cfg, large_cfg = shapes(shape, args.quick, args.vocab)
    want = {(o1, i1, o2, i2) for _, o1, i1, o2, i2, _ in block_linears(shape, small_cfg, large_cfg)}
    assert set(cands.values()) == want, (cands, want)
    plan_rows = [
        f"| {shape} | {path} | {'x'.join(map(str, sh))} | {'factored' if path in plan else 'materialize'} |"
        for path, sh in cands.items()
    ]

    times = {p: [] for p in PROVIDERS}
    order = list(PROVIDERS)
    for rnd in range(args.warmup + args.repeats):
        order = order[1:] + order[:1]  # rotate: no provider always runs first or after the same one
        for p in order:
            t = clock(runners[p].step)
            if rnd >= args.warmup:
                times[p].append(t)
        if device.type == "cpu":
            print(f"  {shape}: round {rnd + 1}/{args.warmup + args.repeats}", file=sys.stderr, flush=True)
    base = statistics.median(times["plain-large"])
    rows = []
    for p in PROVIDERS:
        med, p20, p80 = quantiles(times[p])
        m = (mem or {}).get(p, {})
        if "peak" in m:
            pk = f"{m['peak'] / MiB:.0f}{'' if m['exact'] else '*'}"
            st = f"{m['state'] / MiB:.0f}"
            rel = f"{m['peak'] / mem['plain-large']['peak']:.2f}" if "peak" in mem.get("plain-large", {}) else "-"
        else:
            pk = st = rel = "-"
        r = runners[p]
        rows.append(
            f"| {shape} | {p} | {med * 1e3:.0f} | {p20 * 1e3:.0f} | {p80 * 1e3:.0f} | {med / base:.2f} | {pk} | {st} | "
            f"{rel} | {r.n_params / 1e6:.1f} | {r.notes} |"
        )
    del runners
    gc.collect()
    return rows, plan_rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default=None, choices=list(DTYPES), help="default: bfloat16 on cuda, float32 on cpu")
    ap.add_argument("--shapes", default="all", choices=["bert", "llama", "all"])
    ap.add_argument("--batch", type=int, default=None, help="default: 256 on cuda (the paper's), 8 on cpu")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=None, help="vocabulary (default 30522 / 32000; quick 2048)")
    ap.add_argument("--quick", action="store_true", help="CPU sizes: BERT 3L/256H->6L/384H, Llama 2L/256H->4L/512H")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up rounds (default 3 cuda / 1 cpu)")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds (default 20 cuda / 7 cpu)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads (default 1: on a shared machine a descheduled OpenMP thread stalls every parallel region)",
    )
    ap.add_argument("--no-memory", action="store_true", help="skip the per-provider memory processes")
    ap.add_argument("--micro-tokens", type=int, nargs="*", default=None, help="token counts of the cost-model check")
    ap.add_argument("--micro-max-tokens", type=int, default=None, help="largest token count of the check")
    ap.add_argument("--micro-repeats", type=int, default=5)
    ap.add_argument("--out", default=None, help="append the markdown tables to this file")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if not cuda:
        torch.set_num_threads(args.threads)
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.batch = args.batch or (256 if cuda else 8)
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    args.repeats = args.repeats or (20 if cuda else 7)
    if args.micro_tokens is None:
        args.micro_tokens = [1024, 8192, 32768] if cuda else [128, 1024, 4096]
    args.micro_max_tokens = args.micro_max_tokens or (131072 if cuda else 8192)
    names = ["bert", "llama"] if args.shapes == "all" else [args.shapes]

    t0 = time.time()
    cmd = argv if argv is not None else sys.argv[1:]
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = [
        f"### Operator step, {when}",
        "",
        f"- device: {device_name(device)}; torch {torch.__version__}; transformers {transformers.__version__}; "
        f"python {platform.python_version()}",
        f"- command: `{shlex.join(['python', 'benchmarks/bench_operator_step.py', *cmd])}`",
        f"- batch {args.batch} x {args.seq} tokens, {args.dtype}, {'quick sizes' if args.quick else 'full sizes'}, "
        f"{args.warmup} warm-up + {args.repeats} timed rounds, providers interleaved",
        "",
    ]
    step_rows = [
        "| shape | provider | median ms | p20 | p80 | x plain-large | peak MiB | state MiB | peak x plain "
        "| trained M params | notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    plan_rows = ["| shape | block linear | o1 x i1 x o2 x i2 | auto plan at the timed batch |", "|---|---|---|---|"]
    micro_rows = [
        "| shape | module kinds | tokens | materialize ms | factored ms | model ms (mat / fact) | model picks "
        "| picked / faster | |",
        "|---|---|---:|---:|---:|---|---|---:|---|",
    ]
    wrong = 0
    for name in names:
        mem = None
        if not args.no_memory:
            mem = measure_memory(name, args)
            print(f"  {name}: memory done ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
        rows, plans = run_shape(name, args, device, mem)
        step_rows += rows
        plan_rows += plans
        print(f"  {name}: steps done ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
        rows, w = cost_model_check(name, args, device)
        micro_rows += rows
        wrong += w
        print(f"  {name}: cost model check done ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    verdict = (
        f"Cost model ({'H200' if device_model(device) is H200 else device.type} device model, {args.dtype}): "
        f"{'never' if wrong == 0 else f'{wrong} time(s)'} picked the slower mode by more than 10%."
    )
    text = "\n".join(
        head
        + ["One operator-training step (fwd + bwd + AdamW). Peak/state: see the notes; `*` = whole-process HWM.", ""]
        + step_rows
        + ["", "Auto plan (ours-auto) per block linear:", ""]
        + plan_rows
        + ["", "Cost-model break-even token counts (materialize cheaper above):", ""]
        + breakeven_table(args.quick, args.vocab)
        + ["", "Cost-model check: one large layer's linear, fwd+bwd (medians):", ""]
        + micro_rows
        + ["", verdict, f"(total {time.time() - t0:.0f} s)", ""]
    )
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
