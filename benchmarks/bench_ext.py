"""The C++ extension vs our torch path vs the official eager math, on the BERT-Base shape's whole operator.

One run, providers side by side (``common.time_interleaved``: median over interleaved rounds):

- ``official``: the official LiGO code's math (``common.official_weight``): per large layer and module, the
  elementwise depth mix ``(W_stack * coeffs).sum(-1)`` over (out, in, L1)-stacked small weights, then width
  expansion with ``torch.cat``, in-dim first.
- ``torch``: ``ligo_expand(backend="torch")`` per module kind (batched over layers), vectors one by one.
- ``cpp``: the C++ ops (``ligo_expand(backend="cpp")`` per module kind, one ``ligo_expand_vec_multi`` for all vectors).

The operator of ``common.bert_shape()`` (6L/512H -> 12L/768H): matrices q, k, v, attn-out (512x512 -> 768x768),
ffn-in (2048x512 -> 3072x768), ffn-out (512x2048 -> 768x3072); vectors: their 6 biases and 2 LayerNorms' weight
and bias per layer; per-layer width matrices for the hidden (256x512) and intermediate (1024x2048) growth, one
depth matrix (12x6) per module kind. Modes: forward (no grad) and forward+backward (gradients of every operator
parameter and small weight).

    python benchmarks/bench_ext.py [--out benchmarks/NOTES_ext.md] [--rounds 5]
    python benchmarks/bench_ext.py --check      # the official provider against the official fixtures

On CUDA (when available) it also times the multi-tensor vector op against a per-tensor loop (launch counts from the
profiler).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from common import append_markdown, bert_shape, official_weight, run_check, run_header, time_interleaved

from ligo_fast import extension as ext
from ligo_fast import ops


@dataclass
class Operator:
    mats: dict  # name -> (W (L1, o1, i1), depth (L2, L1), E_out key, E_in key)
    vecs: dict  # name -> (b (L1, o1), depth, E key)
    widths: dict  # key -> (L2, large-small, small)

    def params(self):
        ts = [t for W, d, _, _ in self.mats.values() for t in (W, d)]
        ts += [t for b, d, _ in self.vecs.values() for t in (b, d)]
        return ts + list(self.widths.values())


def build(dtype=torch.float32, device="cpu", seed=0) -> Operator:
    small, large = bert_shape().small, bert_shape().large
    L1, L2 = small.num_hidden_layers, large.num_hidden_layers
    H1, H2, F1, F2 = small.hidden_size, large.hidden_size, small.intermediate_size, large.intermediate_size
    g = torch.Generator().manual_seed(seed)

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g) * scale).to(device, dtype).requires_grad_(True)

    widths = {"h": r(L2, H2 - H1, H1, scale=H1**-0.5), "f": r(L2, F2 - F1, F1, scale=F1**-0.5)}
    mats = {name: (r(L1, H1, H1), r(L2, L1), "h", "h") for name in ("q", "k", "v", "attn_out")}
    mats["ffn_in"] = (r(L1, F1, H1), r(L2, L1), "f", "h")
    mats["ffn_out"] = (r(L1, H1, F1), r(L2, L1), "h", "f")
    vecs = {f"{m}_bias": (r(L1, H1), mats[m][1], "h") for m in ("q", "k", "v", "attn_out", "ffn_out")}
    vecs["ffn_in_bias"] = (r(L1, F1), mats["ffn_in"][1], "f")
    for ln in ("ln1", "ln2"):
        vecs[f"{ln}_weight"] = (r(L1, H1), r(L2, L1), "h")
        vecs[f"{ln}_bias"] = (r(L1, H1), vecs[f"{ln}_weight"][1], "h")
    return Operator(mats, vecs, widths)


def official_prep(op: Operator) -> dict:
    """Small weights stacked (out, in, L1) / (out, L1) as the official code keeps them (outside the timing)."""
    stacked = {n: W.detach().permute(1, 2, 0).contiguous().requires_grad_(True) for n, (W, _, _, _) in op.mats.items()}
    stacked.update({n: b.detach().t().contiguous().requires_grad_(True) for n, (b, _, _) in op.vecs.items()})
    return stacked


def run_official(op: Operator, stacked: dict) -> list[torch.Tensor]:
    outs = []
    for name, (_, depth, eo, ei) in op.mats.items():
        Ws, Eo, Ei = stacked[name], op.widths[eo], op.widths[ei]
        outs += [official_weight(Ws, depth[l], Eo[l], Ei[l]) for l in range(depth.shape[0])]
    for name, (_, depth, e) in op.vecs.items():
        bs, E = stacked[name], op.widths[e]
        outs += [official_weight(bs, depth[l], E[l], None) for l in range(depth.shape[0])]
    return outs


def run_ours(op: Operator, backend: str) -> list[torch.Tensor]:
    outs = [ops.ligo_expand(W, d, op.widths[eo], op.widths[ei], backend=backend) for W, d, eo, ei in op.mats.values()]
    problems = [(b, d, op.widths[e], None) for b, d, e in op.vecs.values()]
    return outs + ops.ligo_expand_vec_multi(problems, backend=backend)


def _inputs(provider: str, op: Operator, stacked: dict) -> list[torch.Tensor]:
    if provider == "official":
        return (
            list(stacked.values())
            + [d for _, d, _, _ in op.mats.values()]
            + [d for _, d, _ in op.vecs.values()]
            + list(op.widths.values())
        )
    return op.params()


def fwd_bwd(provider: str, op: Operator, stacked: dict, grads: dict) -> None:
    outs = run_official(op, stacked) if provider == "official" else run_ours(op, provider)
    gs = grads.get(provider)
    if gs is None:  # random upstream gradients, fixed per provider layout
        gen = torch.Generator().manual_seed(1)
        gs = grads[provider] = [torch.randn(o.shape, generator=gen).to(o.device, o.dtype) for o in outs]
    ins = list(dict.fromkeys(_inputs(provider, op, stacked)))  # unique, ordered
    torch.autograd.grad(outs, ins, gs)


def forward(provider: str, op: Operator, stacked: dict) -> None:
    with torch.no_grad():
        run_official(op, stacked) if provider == "official" else run_ours(op, provider)


def check_agree(op: Operator, stacked: dict) -> float:
    """Max relative difference of the three providers' outputs (layout-matched)."""
    with torch.no_grad():
        off = run_official(op, stacked)
        ours = run_ours(op, "cpp")
        L2 = next(iter(op.mats.values()))[1].shape[0]
        mine = [t[l] for t in ours for l in range(L2)]
        mats = len(op.mats) * L2
        # official order: per module, per layer; ours: per module (batched over layers): same order.
        worst = 0.0
        for a, b in zip(off[:mats] + off[mats:], mine[:mats] + mine[mats:], strict=True):
            worst = max(worst, ((a - b).abs().max() / b.abs().max()).item())
    return worst


def cpu_table(rounds: int) -> list[tuple[str, str, float]]:
    """Median seconds per (mode, provider), providers interleaved round by round."""
    op = build()
    stacked = official_prep(op)
    grads: dict = {}
    rows = []
    for mode, fn in (("forward", forward), ("fwd+bwd", fwd_bwd)):
        fns = {}
        for provider in ("official", "torch", "cpp"):
            args = (provider, op, stacked) + ((grads,) if fn is fwd_bwd else ())
            fns[provider] = lambda fn=fn, args=args: fn(*args)
        for provider, st in time_interleaved(fns, "cpu", rounds=rounds, warmup=1).items():
            rows.append((mode, provider, st.median))
            spread = f"p20 {st.p20 * 1e3:.1f}, p80 {st.p80 * 1e3:.1f}"
            print(f"{mode:8s} {provider:9s} median {st.median * 1e3:9.1f} ms  ({spread})")
    print(f"max relative difference official vs cpp: {check_agree(op, stacked):.2e}")
    return rows


def gpu_multi_vec(min_time: float) -> list[str]:
    """Multi-tensor vector op vs a per-tensor loop on CUDA: time and kernel launches."""
    from torch.profiler import ProfilerActivity, profile

    op = build(device="cuda")
    problems = [(b, d, op.widths[e], None) for b, d, e in op.vecs.values()]
    lines = []
    for mode in ("forward", "fwd+bwd"):
        steps = {}
        for name, fn in (
            ("multi", lambda: ops.ligo_expand_vec_multi(problems, backend="cpp")),
            ("loop", lambda: [ops.ligo_expand_vec(b, d, e, residual=r, backend="cpp") for b, d, e, r in problems]),
        ):

            def step(fn=fn, mode=mode):
                if mode == "forward":
                    with torch.no_grad():
                        return fn()
                outs = fn()
                torch.autograd.grad(outs, [t for p in problems for t in p[:3]], [torch.ones_like(o) for o in outs])

            steps[name] = step
        stats = time_interleaved(steps, "cuda", rounds=10, warmup=1, min_sample_s=min_time / 10)
        res = {}
        for name, step in steps.items():
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                step()
                torch.cuda.synchronize()
            launches = sum(e.count for e in prof.key_averages() if "multi_vec" in e.key)
            res[name] = (stats[name].median, launches)
        lines.append(
            f"| {mode} | {res['multi'][0] * 1e6:.0f} us, {res['multi'][1]} vector kernels | "
            f"{res['loop'][0] * 1e6:.0f} us, {res['loop'][1]} vector kernels |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="append a markdown table to this file")
    parser.add_argument("--rounds", type=int, default=5, help="CPU: interleaved timing rounds per provider")
    parser.add_argument("--min-time", type=float, default=2.0, help="GPU: seconds of timing per measurement")
    parser.add_argument("--skip-cpu", action="store_true", help="only the GPU table")
    parser.add_argument("--check", action="store_true", help="only check the official provider against the fixtures")
    args = parser.parse_args()
    if args.check:
        raise SystemExit(run_check())
    print(f"cpp extension: {ext.load_library()}")
    device = "cuda" if args.skip_cpu and torch.cuda.is_available() else "cpu"
    md = run_header(f"{bert_shape().label()} operator", device, "bench_ext.py", None) + [
        f"- extension: {ext.load_library()}",
    ]
    if not args.skip_cpu:
        by = {(m, p): t for m, p, t in cpu_table(args.rounds)}
        md += [
            "",
            "| CPU mode | official eager (ms) | ligo_fast torch (ms) | ligo_fast cpp (ms) | cpp vs official |",
            "|---|---|---|---|---|",
        ]
        for mode in ("forward", "fwd+bwd"):
            o, t, c = by[(mode, "official")], by[(mode, "torch")], by[(mode, "cpp")]
            md.append(f"| {mode} | {o * 1e3:.1f} | {t * 1e3:.1f} | {c * 1e3:.1f} | {o / c:.2f}x |")
    if torch.cuda.is_available() and ext.has_cuda_kernels():
        md += [
            "",
            f"GPU {torch.cuda.get_device_name()}: 10 vector problems (biases, LayerNorms) of the operator",
            "",
            "| mode | multi-tensor op | per-tensor loop |",
            "|---|---|---|",
            *gpu_multi_vec(args.min_time),
        ]
    text = "\n".join(md) + "\n"
    print(text)
    append_markdown(args.out, text)


if __name__ == "__main__":
    main()
