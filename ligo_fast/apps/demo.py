"""``make demo``: does growing a small pretrained model save training compute? LiGO (two inits) vs lossless expansion
vs stacking vs scratch, over one or more seeds and large-model budgets.

    python -m ligo_fast.apps.demo                         # demo preset, seed 0, five methods: ~5 min on 2 CPU cores
    python -m ligo_fast.apps.demo --seeds 10,11,12 --budgets 0.5,1,2,4    # mean ± sd, per-seed wins, the budget plot
    python -m ligo_fast.apps.demo --methods ligo,stack --ligo-fraction 0.1 --grown-schedule lemon
    python -m ligo_fast.apps.demo --preset gpu-base --device cuda

Outputs go to a new run directory, ``runs/<preset>-<date>-<time>/`` (untracked), unless ``--out-dir`` names another
(``--out-dir benchmarks/results`` writes the committed results). One run writes
``growth_savings_<preset>.{md,png,json}``; several seeds or budgets (or a budget other than 1x) add
``_x<budget>``/``_seed<seed>`` to each run's files; several runs write the aggregate
``growth_savings_<preset>_sweep.{md,png,json}``. ``benchmarks/growth_savings.py`` is this same command line. The
experiment itself is :mod:`ligo_fast.apps.savings`; this module parses arguments, prints, and writes the outputs. It
imports the savings package, ``ligo_fast.apps.progress`` and torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from .progress import on_terminal
from .savings.presets import ALL_METHODS, LIGO_TRAIN, METHODS, PRESETS, Preset, Seeds
from .savings.report import (
    SHORT_LABELS,
    format_sweep,
    format_table,
    plot,
    plot_sweep,
    verdict,
    write_json,
    write_sweep,
    write_sweep_json,
    write_table,
)
from .savings.results import Result
from .savings.run import budget_of, check_methods, run_experiment
from .savings.schedule import GROWN_SCHEDULES

PROG = "python -m ligo_fast.apps.demo"
RUNS_DIR = Path("runs")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _budget_list(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(not (0 < v < float("inf")) for v in values):
        raise argparse.ArgumentTypeError(f"budgets are multiples of the preset's large steps, > 0; got {text!r}")
    return values


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=prog,
        description="Growth savings: LiGO vs lossless expansion vs stacking vs scratch, FLOPs and wall time to "
        "scratch's final loss.",
    )
    ap.add_argument("--preset", default="demo", choices=sorted(PRESETS), help="sizes and budgets (default demo)")
    ap.add_argument("--corpus", default=None, help="text file or directory (default: the Python stdlib's *.py)")
    ap.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    seeds = ap.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=None, help="one base seed (split/data/inits/operator: seed..seed+4)")
    seeds.add_argument("--seeds", type=_int_list, default=None, help="several base seeds, e.g. 10,11,12 (default 0)")
    ap.add_argument(
        "--budgets",
        type=_budget_list,
        default=[1.0],
        help="large-model budgets as multiples of the preset's large steps, e.g. 0.5,1,2,4 (default 1)",
    )
    ap.add_argument("--family", choices=("llama", "gpt2"), default=None, help="model family (default: llama)")
    ap.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma list of {','.join(ALL_METHODS)} (default {','.join(METHODS)})",
    )
    op = ap.add_mutually_exclusive_group()
    op.add_argument("--ligo-steps", type=int, default=None, help="operator steps (default: the ligo_fast.budget rule)")
    op.add_argument(
        "--ligo-fraction", type=float, default=None, help="operator steps as a share of the large steps (no floor/cap)"
    )
    ap.add_argument(
        "--ligo-lr",
        type=float,
        default=None,
        help="operator peak lr of both LiGO rows (default: ligo_fast.budget's rule per row: the large models' lr, "
        "divided by the small width from a function-preserving start)",
    )
    ap.add_argument(
        "--grown-schedule",
        choices=GROWN_SCHEDULES,
        default=None,
        help="lr schedule of every grown model: same (as scratch; default), no-rewarm, lemon (peak kept, faster decay)",
    )
    ap.add_argument(
        "--lossless-width",
        choices=("lossless_noisy", "lossless"),
        default=None,
        help="width init of the lossless and ligo_lossless methods (default lossless_noisy: copies made unequal)",
    )
    ap.add_argument(
        "--ligo-train",
        choices=tuple(LIGO_TRAIN),
        default=None,
        help="operator tensors trained (an ablation): all (default), depth (coefficients alone), width (E, residuals)",
    )
    ap.add_argument("--large-steps", type=int, default=None, help="training steps of each large model (the 1x budget)")
    ap.add_argument("--small-steps", type=int, default=None, help="pretraining steps of the small model")
    ap.add_argument("--max-files", type=int, default=None, help="use only the first N corpus files")
    ap.add_argument(
        "--threads",
        default="auto",
        help="torch CPU threads (default auto: the cores the 1-minute load average leaves free, at least 1; "
        "on a shared, oversubscribed CPU two spinning OpenMP threads run ~10x slower than one)",
    )
    ap.add_argument(
        "--out-dir",
        default=None,
        help="where the PNG, markdown and JSON go (default: a new runs/<preset>-<date>-<time>/, untracked)",
    )
    ap.add_argument("--tag", default="", help="a name part of the output files (lemon: growth_savings_demo_lemon...)")
    ap.add_argument(
        "--aggregate",
        nargs="+",
        metavar="JSON",
        default=None,
        help="no training: sum finished runs' growth_savings_*.json files (of one preset, e.g. from several "
        "processes) up into the sweep outputs; budgets are multiples of the preset's (or --large-steps) steps",
    )
    ap.add_argument("--no-progress", action="store_true", help="no progress bar or per-evaluation log lines")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return ap


def auto_threads() -> int:
    """CPU threads for torch: the cores the 1-minute load average leaves free (rounded), at least 1."""
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        return cores
    return max(1, min(cores, round(cores - load)))


def default_out_dir(preset: str) -> Path:
    """A new run directory under ``runs/`` (gitignored): ``runs/<preset>-<YYYYmmdd-HHMMSS>``."""
    return RUNS_DIR / f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}"


def _printer(preset: Preset):
    """Live milestone lines (through tqdm.write so they do not break a bar). Off a terminal the progress log already
    has one line per evaluation, so the per-evaluation training lines are printed on a terminal only."""
    from tqdm.auto import tqdm

    tty = on_terminal()

    def on_event(name: str, d: dict) -> None:
        label = SHORT_LABELS.get(d.get("method", ""), "")
        if name == "small_done":
            tqdm.write(f"[small] pretrained: val loss {d['val_loss']:.4f} ({d['wall_s']:.1f} s)")
        elif name == "grown":
            extra = f" ({d['operator_params']:,} operator parameters)" if "operator_params" in d else ""
            tqdm.write(f"[{label}] grown, before any training: val loss {d['val_loss']:.4f}{extra}")
        elif name == "materialized":
            tqdm.write(f"[{label}] after operator training, materialised: val loss {d['val_loss']:.4f}")
        elif name == "method_done":
            tqdm.write(f"[{label}] done: final val loss {d['final_loss']:.4f}")
        elif tty and name == "method_eval" and d["step"] % (4 * preset.eval_every) == 0:
            tqdm.write(f"[{label}] train step {d['step']}/{preset.large_steps}: val loss {d['val_loss']:.4f}")

    return on_event


def _stem(preset: str, tag: str, budget: float | None, seed: int | None) -> str:
    parts = ["growth_savings", preset] + ([tag] if tag else [])
    parts += [f"x{budget:g}"] if budget is not None else []
    parts += [f"seed{seed}"] if seed is not None else []
    return "_".join(parts)


def write_aggregate(results: list[Result], out: Path, stem: str, base_steps: int, command: str) -> None:
    """The sweep outputs of several runs (``<stem>_sweep.{md,png,json}``), printed too."""
    md = write_sweep(results, out / f"{stem}_sweep.md", base_steps, command=command)
    png = plot_sweep(results, out / f"{stem}_sweep.png", base_steps)
    js = write_sweep_json(results, out / f"{stem}_sweep.json", base_steps)
    print("\n" + format_sweep(results, base_steps))
    print(f"plot: {png}\ntable: {md}\ndata: {js}")


def _aggregate(ap: argparse.ArgumentParser, args: argparse.Namespace, command: str) -> list[Result]:
    try:
        results = [Result.read(f) for f in args.aggregate]
    except (OSError, ValueError, KeyError, TypeError) as e:
        ap.error(f"--aggregate: cannot read a run's JSON: {e}")
    names = {r.preset.name for r in results}
    if len(names) != 1:
        ap.error(f"--aggregate: the runs come from several presets ({', '.join(sorted(names))})")
    name = names.pop()
    base = args.large_steps or PRESETS[name].large_steps
    out = Path(args.out_dir) if args.out_dir else default_out_dir(name)
    results.sort(key=lambda r: (r.preset.large_steps, r.base_seed))
    write_aggregate(results, out, _stem(name, args.tag, None, None), base, command)
    return results


def main(argv: list[str] | None = None, prog: str = PROG) -> list[Result]:
    """Run the command line; returns every run's :class:`Result` (budget-major, then seed)."""
    ap = build_parser(prog)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    command = " ".join([prog, *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    if args.aggregate:
        return _aggregate(ap, args, command)
    threads = auto_threads() if args.threads == "auto" else int(args.threads)
    torch.set_num_threads(threads)
    overrides = {
        k: v
        for k, v in (
            ("ligo_steps", args.ligo_steps),
            ("ligo_fraction", args.ligo_fraction),
            ("ligo_lr", args.ligo_lr),
            ("grown_schedule", args.grown_schedule),
            ("lossless_width", args.lossless_width),
            ("ligo_train", args.ligo_train),
            ("large_steps", args.large_steps),
            ("small_steps", args.small_steps),
            ("max_files", args.max_files),
        )
        if v is not None
    }
    preset = PRESETS[args.preset].replace(**overrides)
    seeds = args.seeds or [0 if args.seed is None else args.seed]
    try:
        methods = check_methods([m.strip() for m in args.methods.split(",") if m.strip()])
        for b in args.budgets:
            budget_of(preset.scaled(b))  # a bad operator override fails here, before any training
    except ValueError as e:
        ap.error(str(e))
    out = Path(args.out_dir) if args.out_dir else default_out_dir(preset.name)
    many_seeds, many_budgets = len(seeds) > 1, len(args.budgets) > 1

    print(f"ligo_fast growth-savings experiment, preset {preset.name!r} on {args.device}")
    sm, lg = preset.small, preset.large
    print(
        f"  small L{sm.layers}/d{sm.hidden} -> large L{lg.layers}/d{lg.hidden}; small {preset.small_steps} steps; "
        f"{preset.batch_size}x{preset.seq_len} tokens per step; torch threads: {threads} ({args.threads})"
    )
    print(f"  methods: {', '.join(methods)}; seeds: {', '.join(map(str, seeds))}; output: {out}/")
    t0 = time.time()
    results: list[Result] = []
    n_runs = len(seeds) * len(args.budgets)
    for b in args.budgets:
        p = preset.scaled(b)
        for seed in seeds:
            s = Seeds.from_base(seed)
            print(
                f"\n=== run {len(results) + 1}/{n_runs}: seed {seed} {dataclasses.asdict(s)}, budget {b:g}x = "
                f"{p.large_steps} large steps; operator: {budget_of(p).describe()}; grown schedule "
                f"{p.grown_schedule}"
            )
            result = run_experiment(
                p,
                corpus=args.corpus,
                device=args.device,
                seeds=s,
                methods=methods,
                family=args.family,
                progress=not args.no_progress,
                on_event=_printer(p),
            )
            stem = _stem(preset.name, args.tag, b if many_budgets or b != 1 else None, seed if many_seeds else None)
            md = write_table(result, out / f"{stem}.md", command=command)
            png = plot(result, out / f"{stem}.png")
            js = write_json(result, out / f"{stem}.json")
            print(f"\ncorpus: {result.corpus}; model family: {result.family}")
            print(f"target = scratch's final validation loss {result.target:.4f}")
            print(format_table(result))
            print(verdict(result))
            print(f"plot: {png}\ntable: {md}\ndata: {js}")
            results.append(result)
    if n_runs > 1:
        write_aggregate(results, out, _stem(preset.name, args.tag, None, None), preset.large_steps, command)
    print(f"done in {(time.time() - t0) / 60:.1f} min")
    return results


if __name__ == "__main__":
    main()
