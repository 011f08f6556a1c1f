"""Does the factored/materialize cost model (``ligo_fast.factored``) pick the faster mode? Numbers, not tests.

Two tables, for every block linear of the shapes (``common.SHAPES``, ``common.module_kinds``):

* break-even token counts (materialising is cheaper above them) for the CPU and H200 device models, and the
  mode ``linear_mode="auto"`` would pick at the paper's batch (256 x 128 tokens) on an H200 in bf16;
* a check: one large layer's linear, forward + backward (gradients of x and every operator tensor), in both
  modes through the library's public functions (``ops.ligo_expand`` + ``F.linear`` against ``depth_mix`` +
  ``factored_linear``), at a few token counts and at half and twice each break-even; both modes are checked to
  compute the same output first; the two are timed side by side (``common.time_interleaved``). A pick is
  wrong when the picked mode takes more than 1.10x the faster one.

(Moved out of bench_operator_step.py, which now measures whole steps only.)

    python benchmarks/bench_cost_model.py --device cpu --quick
    python benchmarks/bench_cost_model.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import sys
from functools import partial

import torch
from common import DTYPES, SHAPES, append_markdown, module_kinds, run_header, time_interleaved

from ligo_fast import ops
from ligo_fast.factored import CPU, H200, break_even_tokens, costs, device_model, factored_linear
from ligo_fast.reference import compute_dtype, depth_mix

WRONG = 1.10


def linears(name: str, quick: bool):
    """(kind name, o1, i1, o2, i2, L1) of the shape's block linears."""
    return [(k.name, k.o1, k.i1, k.o2, k.i2, k.L1) for k in module_kinds(SHAPES[name](quick)) if k.i1]


def breakeven_table(names: list[str], quick: bool) -> list[str]:
    rows = [
        "| shape | module kinds | small (o1 x i1) | large (o2 x i2) | L1 | break-even tokens: CPU fp32 | H200 bf16 "
        "| H200 fp32 | auto at 256x128 on H200 bf16 |",
        "|---|---|---|---|---:|---:|---:|---:|---|",
    ]
    for name in names:
        for kind, o1, i1, o2, i2, L1 in linears(name, quick):
            be = [
                break_even_tokens(o1, i1, o2, i2, L1, nb, dev)
                for dev, nb in ((CPU, 4), (H200, 2), (H200.for_itemsize(4), 4))
            ]
            m, f = costs(256 * 128, o1, i1, o2, i2, L1, 2, H200)
            bes = ["never" if b is None else str(b) for b in be]
            pick = "factored" if f < m else "materialize"
            rows.append(
                f"| {name}{' (quick)' if quick else ''} | {kind} | {o1}x{i1} | {o2}x{i2} | {L1} | {' | '.join(bes)} | "
                f"{pick} |"
            )
    return rows


def wmix(W, depth):
    """The depth-mixed small weight of one layer (what the factored mode multiplies with)."""
    ct = compute_dtype(W.dtype)
    return depth_mix(W.to(ct), depth.to(ct))[0]


def linear_step(mode: str, x, W, depth, Eo, Ei, gy) -> None:
    """Forward + backward of one large layer's linear, gradients for x and every operator tensor."""
    if mode == "materialize":
        y = torch.nn.functional.linear(x, ops.ligo_expand(W, depth, Eo, Ei)[0])
    else:
        y = factored_linear(x, wmix(W, depth), Eo, Ei, None, None)
    y.backward(gy)
    for t in (x, W, depth, Eo, Ei):
        t.grad = None


def check(name: str, args) -> tuple[list[str], int]:
    """Rows of the check and the number of wrong picks."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    dev, nbytes = device_model(device, dtype.itemsize), dtype.itemsize
    gen = torch.Generator().manual_seed(2)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype).requires_grad_(True)

    rows, wrong = [], 0
    for kind, o1, i1, o2, i2, L1 in linears(name, args.quick):
        be = break_even_tokens(o1, i1, o2, i2, L1, nbytes, dev)
        tokens = set(args.tokens) | (set() if be is None else {max(be // 2, 1), be * 2})
        W = rnd(L1, o1, i1, scale=i1**-0.5)
        depth = torch.softmax(torch.rand(1, L1, generator=gen), -1).to(device, dtype).requires_grad_(True)
        Eo = torch.softmax(torch.rand(o2 - o1, o1, generator=gen), -1).to(device, dtype).requires_grad_(True)
        Ei = torch.softmax(torch.rand(i2 - i1, i1, generator=gen), -1).to(device, dtype).requires_grad_(True)
        for T in sorted(t for t in tokens if t <= args.max_tokens):
            x, gy = rnd(T, i2), rnd(T, o2).detach()
            with torch.no_grad():  # the same function in both modes
                ym = torch.nn.functional.linear(x, ops.ligo_expand(W, depth, Eo, Ei)[0]).double()
                yf = factored_linear(x, wmix(W, depth), Eo, Ei, None, None).double()
                err = ((ym - yf).norm() / ym.norm()).item()
            assert err < (1e-4 if dtype == torch.float32 else 3e-2), (name, kind, T, err)
            fns = {m: partial(linear_step, m, x, W, depth, Eo, Ei, gy) for m in ("materialize", "factored")}
            st = time_interleaved(fns, device, rounds=args.repeats, min_sample_s=0.05 if args.device == "cuda" else 0)
            med = {m: s.median for m, s in st.items()}
            cm, cf = costs(T, o1, i1, o2, i2, L1, nbytes, dev)
            pick = "factored" if cf < cm else "materialize"
            ratio = med[pick] / min(med.values())
            bad = ratio > WRONG
            wrong += bad
            rows.append(
                f"| {name} | {kind} | {T} | {med['materialize'] * 1e3:.2f} | {med['factored'] * 1e3:.2f} | "
                f"{cm * 1e3:.3f} / {cf * 1e3:.3f} | {pick} | {ratio:.2f} | {'**WRONG**' if bad else 'ok'} |"
            )
    return rows, wrong


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="default: bf16 cuda, fp32 cpu")
    ap.add_argument("--shapes", default="bert,llama", help="comma list of bert, llama, llama-xl")
    ap.add_argument("--quick", action="store_true", help="quick shapes")
    ap.add_argument("--tokens", type=int, nargs="*", default=None, help="token counts (besides the break-evens)")
    ap.add_argument("--max-tokens", type=int, default=None, help="largest token count (default 8192 cpu / 131072)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads")
    ap.add_argument("--out", default=None, help="append the markdown tables to this file")
    args = ap.parse_args(argv)
    cuda = args.device == "cuda"
    if not cuda:
        torch.set_num_threads(args.threads)
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.tokens = args.tokens or ([1024, 8192, 32768] if cuda else [128, 1024, 4096])
    args.max_tokens = args.max_tokens or (131072 if cuda else 8192)
    names = [s for s in args.shapes.split(",") if s]
    rows = [
        "| shape | module kinds | tokens | materialize ms | factored ms | model ms (mat / fact) | model picks "
        "| picked / faster | |",
        "|---|---|---:|---:|---:|---|---|---:|---|",
    ]
    wrong = 0
    for name in names:
        r, w = check(name, args)
        rows += r
        wrong += w
        print(f"  {name}: done", file=sys.stderr, flush=True)
    model = "H200" if device_model(torch.device(args.device)) is H200 else args.device
    text = "\n".join(
        run_header("Cost model", args.device, "bench_cost_model.py", argv)
        + ["", "Break-even token counts (materialize cheaper above):", ""]
        + breakeven_table(names, args.quick)
        + ["", f"Check: one large layer's linear, fwd+bwd, {args.dtype} (medians of {args.repeats} rounds):", ""]
        + rows
        + [
            "",
            f"Cost model ({model} device model, {args.dtype}): {'never' if not wrong else f'{wrong} time(s)'} "
            f"picked the slower mode by more than {WRONG:.2f}x.",
            "",
        ]
    )
    print(text)
    append_markdown(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
