"""``make demo``: does growing a small pretrained model save training compute? (LiGO vs stacking vs scratch)

    python -m ligo_fast.apps.demo                         # demo preset, ~5 min on 2 CPU cores
    python -m ligo_fast.apps.demo --preset gpu-base --device cuda
    python -m ligo_fast.apps.demo --corpus path/to/texts --ligo-steps 50

``benchmarks/growth_savings.py`` is this same command line. The experiment itself is
:mod:`ligo_fast.apps.savings`; this module parses arguments, prints the LiGO trace and the table, and writes the
outputs. It imports the savings package and torch.
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

from .savings.presets import METHODS, PRESETS, Preset, Seeds
from .savings.report import format_table, plot, verdict, write_json, write_table
from .savings.results import Result
from .savings.run import run_experiment

PROG = "python -m ligo_fast.apps.demo"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=prog, description="Growth savings: LiGO vs stacking vs scratch, FLOPs and wall time to a target loss."
    )
    ap.add_argument("--preset", default="demo", choices=sorted(PRESETS), help="sizes and budgets (default demo)")
    ap.add_argument("--corpus", default=None, help="text file or directory (default: the Python stdlib's *.py)")
    ap.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    ap.add_argument("--seed", type=int, default=0, help="base seed; split/data/inits/operator use seed..seed+4")
    ap.add_argument("--family", choices=("llama", "gpt2"), default=None, help="model family (default: llama)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma list of ligo,stack,scratch")
    ap.add_argument("--ligo-steps", type=int, default=None, help="operator training steps (preset default 100)")
    ap.add_argument("--large-steps", type=int, default=None, help="training steps of each large model")
    ap.add_argument("--small-steps", type=int, default=None, help="pretraining steps of the small model")
    ap.add_argument("--max-files", type=int, default=None, help="use only the first N corpus files")
    ap.add_argument(
        "--threads",
        default="auto",
        help="torch CPU threads (default auto: the cores the 1-minute load average leaves free, at least 1; "
        "on a shared, oversubscribed CPU two spinning OpenMP threads run ~10x slower than one)",
    )
    ap.add_argument("--out-dir", default="benchmarks/results", help="where the PNG, markdown and JSON go")
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


def _printer(preset: Preset):
    """Live lines for the LiGO trace (through tqdm.write so they do not break the bar)."""
    from tqdm.auto import tqdm

    def on_event(name: str, d: dict) -> None:
        if name == "small_done":
            tqdm.write(f"[small] pretrained: val loss {d['val_loss']:.4f} ({d['wall_s']:.1f} s)")
        elif name == "ligo_grown":
            tqdm.write(
                f"[ligo] grown, before operator training: val loss {d['val_loss']:.4f} "
                f"({d['operator_params']:,} operator parameters)"
            )
        elif name == "ligo_operator_eval" and d["step"] > 0:
            tqdm.write(f"[ligo] operator step {d['step']}/{preset.ligo_steps}: val loss {d['val_loss']:.4f}")
        elif name == "ligo_materialized":
            tqdm.write(f"[ligo] after operator training, materialised: val loss {d['val_loss']:.4f}")
        elif name == "method_eval" and (d["step"] % (4 * preset.eval_every) == 0 or d["step"] == preset.large_steps):
            tqdm.write(f"[{d['method']}] train step {d['step']}/{preset.large_steps}: val loss {d['val_loss']:.4f}")

    return on_event


def main(argv: list[str] | None = None, prog: str = PROG) -> Result:
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    threads = auto_threads() if args.threads == "auto" else int(args.threads)
    torch.set_num_threads(threads)
    preset = PRESETS[args.preset]
    overrides = {
        k: v
        for k, v in (
            ("ligo_steps", args.ligo_steps),
            ("large_steps", args.large_steps),
            ("small_steps", args.small_steps),
            ("max_files", args.max_files),
        )
        if v is not None
    }
    preset = preset.replace(**overrides)
    seeds = Seeds.from_base(args.seed)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = sorted(set(methods) - set(METHODS))
    if bad:
        raise SystemExit(f"unknown method(s) {bad}; choose from {METHODS}")
    command = " ".join([prog, *map(shlex.quote, sys.argv[1:] if argv is None else argv)])

    print(f"ligo_fast growth-savings experiment, preset {preset.name!r} on {args.device}")
    print(f"  seeds: {dataclasses.asdict(seeds)}; torch threads: {threads} ({args.threads})")
    sm, lg = preset.small, preset.large
    print(
        f"  small L{sm.layers}/d{sm.hidden} -> large L{lg.layers}/d{lg.hidden}; "
        f"small {preset.small_steps} steps, operator {preset.ligo_steps} steps, "
        f"{preset.large_steps} steps per large model, {preset.batch_size}x{preset.seq_len} tokens per step"
    )
    t0 = time.time()
    result = run_experiment(
        preset,
        corpus=args.corpus,
        device=args.device,
        seeds=seeds,
        methods=methods,
        family=args.family,
        progress=not args.no_progress,
        on_event=_printer(preset),
    )
    out = Path(args.out_dir)
    stem = f"growth_savings_{preset.name}"
    md = write_table(result, out / f"{stem}.md", command=command)
    png = plot(result, out / f"{stem}.png")
    js = write_json(result, out / f"{stem}.json")

    tr = result.ligo_trace
    print()
    print(f"corpus: {result.corpus}")
    print(f"model family: {result.family}")
    if "grown_before_operator" in tr:
        print("LiGO validation loss:")
        print(f"  small model (pretrained)            {tr['small']:.4f}")
        print(f"  grown, before operator training     {tr['grown_before_operator']:.4f}")
        print(f"  after operator training (material.) {tr['after_operator_materialized']:.4f}")
        steps = sorted(int(k.rsplit("_", 1)[1]) for k in tr if k.startswith("train_step_"))
        stride = max(1, len(steps) // 6)
        shown = steps[::stride] + ([steps[-1]] if steps[-1] not in steps[::stride] else [])
        print("  during training                     " + ", ".join(f"{s}: {tr[f'train_step_{s}']:.4f}" for s in shown))
    print()
    print(f"target = scratch's final validation loss {result.target:.4f}")
    print(format_table(result))
    print(verdict(result))
    print()
    print(f"plot:  {png}")
    print(f"table: {md}")
    print(f"data:  {js}")
    print(f"done in {(time.time() - t0) / 60:.1f} min")
    return result


if __name__ == "__main__":
    main()
