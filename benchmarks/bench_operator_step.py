"""One LiGO operator-training step against the official code and a plain large-model step: numbers, not tests.

A step = zero_grad + forward + loss + backward + AdamW step on the trainable parameters (lr 1e-5, torch's
defaults otherwise). Providers, built and stepped side by side in one process (``common.time_interleaved``):

* ``official``: the official implementation's structure and math (``common.official_wrap``: per-module
  production inside each Fused module's forward, per-module depth coefficients), checked against the official
  fixtures by ``--check``;
* ``ours-default``: ``ligo_fast.grow(small, large_config)`` with default execution options (and, like every ``ours-*``
  provider, the official init: its state is loaded from the official model's);
* ``ours-eager``: ``grow(..., lean=False)``; ``ours-lean``: ``grow(..., lean=True)`` (memory-lean forced);
* ``compat``: ``ligo_fast.compat.create_ligo_from_model`` (the official API on our ops; BERT/RoBERTa only);
* ``plain-large``: the large HF model alone, every parameter trained, the same batch.

Every LiGO provider loads the official provider's operator state (``load_state_dict(strict=True)``: one layout),
so all compute the same function; their eval losses must agree before anything is timed. Peak memory: each
provider in its own fresh process (``common.measure_peak``). Shapes (``common.SHAPES``): the BERT-Base shape
(MLM) and Llama 8L/512H -> 16L/1024H with GQA (causal LM); ``--quick`` for smoke runs.

Also the lean-scaling table: Llama d64 -> d128 (``common.lean_llama_shape``), 1 x 32 tokens, forward + backward,
large depths 100/200/400, ``lean=True`` vs ``lean=False``.

    python benchmarks/bench_operator_step.py --check                                   # official vs fixtures
    python benchmarks/bench_operator_step.py --out benchmarks/RESULTS.md               # CPU: 2x64, 8x128
    python benchmarks/bench_operator_step.py --device cuda --shapes bert --tokens 256x128 --dtype bfloat16
    python benchmarks/bench_operator_step.py --quick                                   # smoke run, minutes
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from dataclasses import dataclass, replace
from functools import partial

import torch
from common import (
    DTYPES,
    SHAPES,
    MiB,
    append_markdown,
    lean_llama_shape,
    load_average,
    measure_peak,
    official_wrap,
    run_check,
    run_header,
    time_interleaved,
)

import ligo_fast
from ligo_fast import compat

PROVIDERS = (
    "official", "ours-default", "ours-eager", "ours-lean", "ours-factored", "ours-auto", "compat", "plain-large",
)  # fmt: skip
GROW_OPTIONS = {
    "ours-default": {},
    "ours-eager": {"lean": False, "linear_mode": "materialize"},
    "ours-lean": {"lean": True},
    "ours-factored": {"lean": False, "linear_mode": "factored"},
    "ours-auto": {"lean": False, "linear_mode": "auto"},
}
# the official code's init for every grow() provider: the operator's state is loaded from the official model's (the
# losses are compared), and grow()'s default (exact lossless) start has a few more tensors (fixed scales)
OFFICIAL_INITS = {"depth_init": "stackbert_noisy", "width_init": "rand"}
STEP_GOAL, MEM_GOAL = 1.15, 1.0  # issue 7: <= 1.15x a plain large step, no more peak memory


@dataclass(frozen=True)
class Spec:
    """Everything a process needs to build one provider (picklable: memory children get it)."""

    shape: str
    quick: bool
    vocab: int | None
    provider: str
    batch: int
    seq: int
    device: str
    dtype: str


def supports(shape: str, provider: str) -> bool:
    return provider != "compat" or SHAPES[shape](True).hf_class in compat.SUPPORTED_CLASSES


class Runner:
    """One provider: its model, AdamW over its trainable parameters, a batch, ``step()`` and ``loss()``."""

    def __init__(self, spec: Spec, state: dict | None = None):
        shape = SHAPES[spec.shape](spec.quick, spec.vocab)
        self.provider, self.device = spec.provider, torch.device(spec.device)
        torch.manual_seed(0)
        small = shape.model("small")  # the same small model for every LiGO provider
        if spec.provider == "plain-large":
            model = shape.model("large")
        elif spec.provider == "official":
            model = official_wrap(shape.model("large"), small)
        elif spec.provider == "compat":
            model = compat.create_ligo_from_model(shape.model("large"), compat.ligo_args(), source_model=small)
        else:
            model = ligo_fast.grow(small, shape.large, seed=0, **OFFICIAL_INITS, **GROW_OPTIONS[spec.provider])
        del small
        self.model = model.to(device=self.device, dtype=DTYPES[spec.dtype])
        if state is not None:
            self.model.load_state_dict(state, strict=True)
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.n_trained = sum(p.numel() for p in params)
        self.opt = torch.optim.AdamW(params, lr=1e-5)
        self.set_batch(spec.batch, spec.seq, shape.large.vocab_size)

    def set_batch(self, batch: int, seq: int, vocab: int) -> None:
        gen = torch.Generator().manual_seed(1)
        self.ids = torch.randint(0, vocab, (batch, seq), generator=gen).to(self.device)

    def loss(self) -> float:
        self.model.eval()
        with torch.no_grad():
            out = self.model(input_ids=self.ids, labels=self.ids).loss.float().item()
        self.model.train()
        return out

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.model(input_ids=self.ids, labels=self.ids).loss.backward()
        self.opt.step()

    def notes(self) -> str:
        if isinstance(self.model, ligo_fast.LiGOModel):
            batch = {"input_ids": self.ids}
            with torch.enable_grad():
                lean = self.model.lean_now((), batch)
            forms = list(self.model.factored_plan((), batch).values())
            split = ", ".join(f"{forms.count(f)} {f}" for f in ("factored", "out", "in") if f in forms)
            return f"lean {'on' if lean else 'off'}, {len(forms)} factored" + (f" ({split})" if forms else "")
        return ""


def step_for_memory(spec: Spec):
    """Memory children: build one provider, return its step (``common.measure_peak``)."""
    return Runner(spec).step


def parse_tokens(text: str) -> list[tuple[int, int]]:
    out = []
    for part in filter(None, text.split(",")):
        b, _, s = part.partition("x")
        out.append((int(b), int(s)))
    return out


def step_table(args, log, emit, record) -> int:
    """The step table; returns 1 when a provider failed or disagreed with the official loss (it is left out)."""
    failed = []

    def fail(name: str, p: str, msg: str) -> None:
        log(f"{name} {p}: {msg}")
        emit(f"- {name} {p}: FAILED: {msg}")
        record(kind="check", shape=name, provider=p, ok=False, error=msg)
        failed.append(p)

    emit(
        "| shape | tokens | dtype | provider | median ms | p20 | p80 | x official | x plain | peak MiB | state MiB "
        "| peak x plain | trained M params | notes |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    )
    verdicts = []
    tol = 1e-4 if args.dtype == "float32" else 2e-2
    for name in args.shapes:
        shape = SHAPES[name](args.quick, args.vocab)
        provs = [p for p in PROVIDERS if supports(name, p) and p in args.providers]
        b0, s0 = args.tokens[0]
        base = Spec(name, args.quick, args.vocab, "official", b0, s0, args.device, args.dtype)
        mem: dict[tuple, dict] = {}
        if not args.no_memory:  # before the timing process builds anything: its memory stays out of the way
            for batch, seq in args.tokens:
                for p in provs:
                    res = measure_peak(step_for_memory, (replace(base, provider=p, batch=batch, seq=seq),),
                                       args.device, args.threads)  # fmt: skip
                    mem[(batch, seq, p)] = res
                    if "error" in res:
                        log(f"memory {name} {batch}x{seq} {p}: {res['error']}")
                log(f"{name} {batch}x{seq}: memory done")
        runners = {"official": Runner(base)}
        state = runners["official"].model.state_dict()
        for p in provs[1:]:
            try:
                runners[p] = Runner(replace(base, provider=p), None if p == "plain-large" else state)
            except Exception as e:  # noqa: BLE001 - one provider's failure is reported, the others are timed
                fail(name, p, f"build failed: {type(e).__name__}: {e}")
        del state
        log(f"{name}: {len(runners)} providers built")
        for batch, seq in args.tokens:
            for r in runners.values():
                r.set_batch(batch, seq, shape.large.vocab_size)
            ref = runners["official"].loss()
            agree = {}
            for p, r in list(runners.items()):
                if p not in ("official", "plain-large"):
                    try:
                        loss = r.loss()
                    except Exception as e:  # noqa: BLE001
                        fail(name, p, f"forward failed: {type(e).__name__}: {e}")
                        del runners[p]
                        continue
                    agree[p] = abs(loss - ref) / abs(ref)
                    record(kind="check", shape=name, tokens=f"{batch}x{seq}", provider=p, rel=agree[p], tol=tol,
                           ok=agree[p] <= tol)  # fmt: skip
                    if not agree[p] <= tol:
                        fail(name, p, f"loss {loss} differs from the official provider's {ref} (tolerance {tol:.0e})")
                        del runners[p]
            stats = time_interleaved(
                {p: r.step for p, r in runners.items()},
                args.device,
                rounds=args.repeats,
                warmup=args.warmup,
                progress=lambda i, n, w=f"{name} {batch}x{seq}": log(f"{w}: round {i}/{n}"),
                calibrate=args.warmup > 0,  # --warmup 0: a dry run's one call per provider
            )
            off, plain = stats["official"].median, stats["plain-large"].median
            pm = mem.get((batch, seq, "plain-large"), {})
            for p, r in runners.items():
                st, m = stats[p], mem.get((batch, seq, p), {})
                if "peak" in m:
                    pk, sm = f"{m['peak'] / MiB:.0f}{'' if m['exact'] else '*'}", f"{m['state'] / MiB:.0f}"
                    rel = f"{m['peak'] / pm['peak']:.2f}" if "peak" in pm else "-"
                else:
                    pk = sm = rel = "-"
                notes = r.notes()
                if p in agree:
                    notes = "; ".join(filter(None, [notes, f"loss = official's (rel. {agree[p]:.0e})"]))
                emit(
                    f"| {name} | {batch}x{seq} | {args.dtype} | {p} | {st.median * 1e3:.0f} | {st.p20 * 1e3:.0f} | "
                    f"{st.p80 * 1e3:.0f} | {st.median / off:.2f} | {st.median / plain:.2f} | {pk} | {sm} | {rel} | "
                    f"{r.n_trained / 1e6:.1f} | {notes} |"
                )
                peak_mib = m["peak"] / MiB if "peak" in m else None
                record(kind="time", shape=name, tokens=f"{batch}x{seq}", provider=p, median_ms=st.median * 1e3,
                       p20_ms=st.p20 * 1e3, p80_ms=st.p80 * 1e3, x_official=st.median / off,
                       x_plain=st.median / plain, peak_mib=peak_mib, notes=notes)  # fmt: skip
            if "ours-default" not in stats:
                continue
            d = stats["ours-default"].median / plain
            md = mem.get((batch, seq, "ours-default"), {})
            mtxt = f"{md['peak'] / pm['peak']:.2f}x" if "peak" in md and "peak" in pm else "not measured"
            verdicts.append(
                f"- {name} {batch}x{seq} {args.dtype}: ours-default {d:.2f}x a plain large step (goal <= {STEP_GOAL}: "
                f"{'met' if d <= STEP_GOAL else 'MISSED'}), peak memory {mtxt} plain's"
                + ("" if "peak" not in md or "peak" not in pm else
                   f" (goal <= {MEM_GOAL}: {'met' if md['peak'] <= pm['peak'] else 'MISSED'})")
                + f"; {stats['official'].median / stats['ours-default'].median:.2f}x faster than official"
            )  # fmt: skip
        del runners
        gc.collect()
    emit("", *verdicts)
    return 1 if failed else 0


def fwd_bwd(model, ids) -> None:
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=ids).loss.backward()


def lean_table(args, log, emit) -> None:
    emit(
        f"Lean scaling: Llama d64 -> d128, small depth {args.lean_small_layers}, 1 x 32 tokens, forward + backward "
        f"(no optimizer), {args.dtype}.",
        "",
        "| large layers | eager ms | p20-p80 | lean ms | p20-p80 | lean / eager | eager / eager at first | "
        "lean / lean at first |",
        "|---:|---:|---|---:|---|---:|---:|---:|",
    )
    first = None
    dev, dt = torch.device(args.device), DTYPES[args.dtype]
    for L2 in args.lean_layers:
        shape = lean_llama_shape(L2, args.lean_small_layers)
        torch.manual_seed(0)
        small = shape.model("small")
        models = {
            mode: ligo_fast.grow(small, shape.large, seed=0, lean=(mode == "lean")).to(dev, dt)
            for mode in ("eager", "lean")
        }
        ids = torch.randint(0, shape.large.vocab_size, (1, 32), generator=torch.Generator().manual_seed(1)).to(dev)
        with torch.no_grad():
            losses = {m: model(input_ids=ids, labels=ids).loss.item() for m, model in models.items()}
        assert abs(losses["lean"] - losses["eager"]) <= 1e-4 * abs(losses["eager"]), losses

        stats = time_interleaved(
            {m: partial(fwd_bwd, model, ids) for m, model in models.items()},
            args.device,
            rounds=args.repeats,
            warmup=args.warmup,
        )
        e, lm = stats["eager"], stats["lean"]
        first = first or (e.median, lm.median)
        emit(
            f"| {L2} | {e.median * 1e3:.1f} | {e.p20 * 1e3:.1f}-{e.p80 * 1e3:.1f} | {lm.median * 1e3:.1f} | "
            f"{lm.p20 * 1e3:.1f}-{lm.p80 * 1e3:.1f} | {lm.median / e.median:.2f} | {e.median / first[0]:.2f} | "
            f"{lm.median / first[1]:.2f} |"
        )
        log(f"lean scaling: {L2} layers done")
        del models, small
        gc.collect()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only check the official provider against the fixtures")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="default: bf16 cuda, fp32 cpu")
    ap.add_argument("--shapes", default="bert,llama", help="comma list of bert,llama ('' for none)")
    ap.add_argument("--tokens", default=None, help="batch x seq list, default cpu 2x64,8x128 / cuda 256x128")
    ap.add_argument("--vocab", type=int, default=None, help="vocabulary (default 30522 / 32000; quick 2048)")
    ap.add_argument("--quick", action="store_true", help="quick shapes (CPU smoke run)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up rounds (default 3 cuda / 1 cpu)")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds (default 10 cuda / 5 cpu)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1: a shared machine stalls parallel regions)")
    ap.add_argument("--no-memory", action="store_true", help="skip the per-provider memory processes")
    ap.add_argument("--lean-layers", default=None, help="large depths of the lean table (default 100,200,400; '')")
    ap.add_argument("--lean-small-layers", type=int, default=4)
    ap.add_argument(
        "--providers",
        default=",".join(PROVIDERS),
        help="comma list (official, ours-default and plain-large always run)",
    )
    ap.add_argument("--out", default=None, help="append the markdown tables to this file")
    ap.add_argument("--jsonl", default=None, help="append every row (and check) as a JSON line to this file")
    args = ap.parse_args(argv)
    if args.check:
        return run_check()
    cuda = args.device == "cuda"
    if not cuda:
        torch.set_num_threads(args.threads)
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.shapes = [s for s in args.shapes.split(",") if s]
    args.providers = {p for p in args.providers.split(",") if p} | {"official", "plain-large", "ours-default"}
    if args.providers - set(PROVIDERS):
        ap.error(f"unknown provider(s) {sorted(args.providers - set(PROVIDERS))}; valid: {', '.join(PROVIDERS)}")
    bad = [s for s in args.shapes if s not in ("bert", "llama")]
    if bad:
        ap.error(f"unknown shape(s) {bad}; valid: bert, llama")
    args.tokens = parse_tokens(args.tokens or ("256x128" if cuda else "2x64,8x128"))
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    args.repeats = args.repeats or (10 if cuda else 5)
    lean = args.lean_layers if args.lean_layers is not None else ("10,20,40" if args.quick else "100,200,400")
    args.lean_layers = [int(x) for x in lean.split(",") if x]

    t0 = time.time()

    def log(msg: str) -> None:
        print(f"  [{time.time() - t0:5.0f} s] {msg}", file=sys.stderr, flush=True)

    text: list[str] = []

    def emit(*lines: str) -> None:  # rows print as they are measured: a run cut short keeps them
        text.extend(lines)
        print("\n".join(lines), flush=True)

    emit(*run_header("Operator-training step", args.device, "bench_operator_step.py", argv))
    emit(
        f"- {args.dtype}, {'quick' if args.quick else 'full'} shapes, {args.warmup} warm-up + {args.repeats} timed "
        f"rounds, providers interleaved; {'no memory' if args.no_memory else 'peak memory per provider in a fresh'}"
        f"{'' if args.no_memory else ' process'}",
        "- columns: median/p20/p80 ms of one step over the timed rounds; x official / x plain = median over that "
        "provider's; peak MiB = peak during one step (GPU: max_memory_allocated; CPU: RSS high-water mark minus "
        "the fresh process' RSS, `*` = whole-process), state MiB = before it; trained = parameters AdamW updates",
        "",
    )

    def record(**row) -> None:
        if args.jsonl:
            with open(args.jsonl, "a") as f:
                f.write(json.dumps({"section": "step", "dtype": args.dtype, "device": args.device, **row}) + "\n")

    status = 0
    if args.shapes:
        status = step_table(args, log, emit, record)
        emit("")
    if args.lean_layers:
        lean_table(args, log, emit)
        emit("")
    emit(f"(total {time.time() - t0:.0f} s; load average at the end: {load_average()})", "")
    append_markdown(args.out, "\n".join(text))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
