"""Write ``summary.md`` for ``gpu_check.sh`` from what its sections left in ``$OUT``: numbers, not tests.

Reads ``rows.jsonl`` (one JSON object per line: the script's section statuses, ``bench_expand.py --jsonl`` and
``bench_operator_step.py --jsonl`` rows and checks, ``gpu_model_check.py --jsonl`` checks, appended as they were
measured) and the pytest lines of ``tests.log``; writes ``summary.md`` (and prints it): sections, tests,
correctness, the expansion and operator-step tables (speed-ups vs the eager official math and its torch.compile,
% of the measured roofline) and the issue's goals. Standard library only, and whatever is missing or malformed is
reported, never fatal, so a summary exists even when every section failed.

    python benchmarks/gpu_summary.py OUT_DIR [--title TEXT]
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
from pathlib import Path

GOALS = {"x_eager": 5.0, "x_compile": 2.0, "roof_pct": 60.0, "step_x_plain": 1.15}  # issue 23's goals


def read_rows(path: Path) -> tuple[list[dict], int]:
    rows, bad = [], 0
    if not path.exists():
        return rows, bad
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            bad += 1
    return rows, bad


def _f(v, fmt: str = ".2f", suffix: str = "") -> str:
    return "-" if v is None or v != v else f"{v:{fmt}}{suffix}"


def test_lines(log: Path) -> list[str]:
    """pytest's closing lines ('N passed, M skipped in Xs') and its FAILED/ERROR lines; for a run cut off before
    its closing line, the count of the per-test outcomes that ``-v`` wrote."""
    if not log.exists():
        return []
    text = log.read_text(errors="replace")
    pat = re.compile(r"^(=+ )?.*\b(passed|failed|error|errors|no tests ran)\b.* in [\d.]+s|^(FAILED|ERROR) ")
    out = [ln.strip("= ") for ln in text.splitlines() if pat.search(ln)]
    runs = text.count("\n### ") or 1  # gpu_check.sh heads every section's log with '### '
    closing = sum(1 for ln in out if re.search(r" in [\d.]+s", ln))
    if closing < runs:
        counts = {k: len(re.findall(rf"::\S+ {k}\b", text)) for k in ("PASSED", "FAILED", "ERROR", "SKIPPED")}
        out.append("per-test lines (a run cut off before its closing line): "
                   + ", ".join(f"{n} {k.lower()}" for k, n in counts.items()))  # fmt: skip
    return out


def summarize(rows: list[dict], bad: int, tests: list[str], title: str) -> str:
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = [f"# {title}, {when}", ""]
    ceil = [r for r in rows if r.get("section") == "expand" and r.get("kind") == "ceilings"]
    if ceil:
        out.append(f"- device: {ceil[0].get('name', '?')}")
        for r in ceil:
            out.append(f"- measured ceilings, {r['dtype']}: matmul {_f(r['tflops'], '.1f')} TFLOP/s, copy "
                       f"{_f(r['gbs'], '.0f')} GB/s")  # fmt: skip
    if bad:
        out.append(f"- {bad} malformed line(s) in rows.jsonl (a section cut off mid-write?)")
    out += ["", "## Sections", "", "| section | status | seconds |", "|---|---|---:|"]
    for r in rows:
        if r.get("section") == "gpu_check":
            out.append(f"| {r.get('name')} | {r.get('status')} | {r.get('seconds', '-')} |")
    out += ["", "## Tests", ""] + ([f"- {t}" for t in tests] or ["- no pytest summary line (not run or cut off)"])

    checks = [r for r in rows if r.get("kind") == "check"]
    out += ["", "## Correctness (before timing)", ""]
    if checks:
        out += [
            "| bench | shape | dtype | provider | ok | rel. difference | tolerance | note |",
            "|---|---|---|---|---|---:|---:|---|",
        ]
        for r in checks:
            ref = r.get("ref") or ("vs torch path" if r["section"] == "expand" else "loss vs official")
            note = r.get("error") or (f"worst in {r['where']}" if r.get("where") else "")
            note = "; ".join(n for n in (note, r.get("note")) if n)
            who = r.get("label", r.get("provider"))
            out.append(f"| {r['section']} ({ref}) | {r.get('shape')} | {r.get('dtype')} | {who} "
                       f"| {'yes' if r.get('ok') else 'NO'} | {_f(r.get('rel'), '.1e')} | {_f(r.get('tol'), '.0e')} "
                       f"| {note} |")  # fmt: skip
    else:
        out.append("- no checks recorded")
    for r in rows:
        if r.get("kind") == "skip":
            out.append(f"- skipped: {r.get('note')}")

    times = [r for r in rows if r.get("section") == "expand" and r.get("kind") == "time"]
    out += ["", "## Expansion (bench_expand.py)", ""]
    if times:
        out += [
            "| shape | dtype | mode | provider | median ms | TFLOP/s | % peak | roof% | speed-up vs eager official | "
            "vs official+compile | correct |",
            "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in times:
            out.append(f"| {r['shape']} | {r['dtype']} | {r['mode']} | {r['label']} | {_f(r['median_ms'], '.3f')} | "
                       f"{_f(r['tflops'])} | {_f(r['pct_peak'], '.1f')} | {_f(r['roof_pct'], '.1f')} | "
                       f"{_f(r['x_eager'], '.2f', 'x')} | {_f(r['x_compile'], '.2f', 'x')} | "
                       f"{'yes' if r.get('ok') else 'NO'} |")  # fmt: skip
    else:
        out.append("- no rows")

    steps = [r for r in rows if r.get("section") == "step" and r.get("kind") == "time"]
    out += ["", "## Operator step (bench_operator_step.py)", ""]
    if steps:
        out += ["| shape | tokens | dtype | provider | median ms | time / official's | time / plain step's | notes |",
                "|---|---|---|---|---:|---:|---:|---|"]  # fmt: skip
        for r in steps:
            what = f"| {r['shape']} | {r['tokens']} | {r['dtype']} | {r['provider']} |"
            out.append(f"{what} {_f(r['median_ms'], '.1f')} | {_f(r['x_official'])} | {_f(r['x_plain'])} | "
                       f"{r.get('notes', '')} |")  # fmt: skip
    else:
        out.append("- no rows")
    out += ["", "## Goals (issue 23)", ""] + goals(times, steps)
    return "\n".join(out) + "\n"


def goals(times: list[dict], steps: list[dict]) -> list[str]:
    def verdict(v, goal, low_is_good=False) -> str:
        if v is None or v != v:
            return "not measured"
        met = v <= goal if low_is_good else v >= goal
        return f"{v:.2f} ({'met' if met else 'MISSED'})"

    def pick(shape: str, provider: str = "triton", mode: str = "fwd+bwd") -> dict:
        return next((r for r in times if r["shape"] == shape and r["mode"] == mode and r["provider"] == provider
                     and r["dtype"] in ("bfloat16", "float16")), {})  # fmt: skip

    bert = pick("bert", "triton-grouped") or pick("bert")  # the model's production runs grouped (kernels/group.py)
    big = pick("llama-xl") or pick("llama")
    step = next((r for r in steps if r["provider"] == "ours-default" and r["dtype"] != "float32"), {})
    return [
        f"- BERT operator fwd+bwd, {bert.get('provider', 'triton')} vs eager official (>= {GOALS['x_eager']}x): "
        f"{verdict(bert.get('x_eager'), GOALS['x_eager'])}",
        f"- BERT operator fwd+bwd, {bert.get('provider', 'triton')} vs official+compile (>= {GOALS['x_compile']}x): "
        f"{verdict(bert.get('x_compile'), GOALS['x_compile'])}",
        f"- Llama-scale expansion fwd+bwd ({big.get('shape', 'no row')}), % of the roofline "
        f"(>= {GOALS['roof_pct']:.0f}): "
        f"{verdict(big.get('roof_pct'), GOALS['roof_pct'])}",
        f"- operator step, ours-default / plain large step (<= {GOALS['step_x_plain']}): "
        f"{verdict(step.get('x_plain'), GOALS['step_x_plain'], low_is_good=True)}",
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="gpu_check.sh's output directory")
    ap.add_argument("--title", default="gpu_check.sh summary")
    args = ap.parse_args(argv)
    out = Path(args.out)
    rows, bad = read_rows(out / "rows.jsonl")
    text = summarize(rows, bad, test_lines(out / "tests.log"), args.title)
    (out / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
