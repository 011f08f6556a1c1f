"""The experiment's outputs. One run: the markdown table and report (:func:`format_table`, :func:`write_table`), the
honest :func:`verdict`, the plot (:func:`plot`: validation loss against FLOPs) and the JSON of everything
(:func:`write_json`). Several seeds and budgets (:mod:`.aggregate`): :func:`write_sweep` (tables and the goal check),
:func:`plot_sweep` (FLOPs saved against the budget) and :func:`write_sweep_json`.

Imports :mod:`.aggregate`, :mod:`.results`, the vocabulary size of :mod:`.corpus`, and matplotlib when plotting.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from pathlib import Path

from . import aggregate
from .corpus import VOCAB_SIZE
from .presets import OPERATOR_METHODS
from .results import Result, run_metadata

METHOD_LABELS = {
    "ligo": "LiGO (official init: operator + materialise)",
    "ligo_lossless": "LiGO (lossless init: operator + materialise)",
    "lossless": "Lossless expansion (no operator)",
    "stack": "Stacking (stackbert + sel, no operator)",
    "gstack": "G_stack (stack duplication + noisy width copy, no operator)",
    "hypercloning": "HyperCloning (noisy width copy, no operator)",
    "llama_pro": "LLaMA-Pro (identity blocks, no operator)",
    "scratch": "Scratch (no growth)",
}
SHORT_LABELS = {
    "ligo": "LiGO",
    "ligo_lossless": "LiGO (lossless init)",
    "lossless": "lossless",
    "stack": "stacking",
    "gstack": "G_stack",
    "hypercloning": "HyperCloning",
    "llama_pro": "LLaMA-Pro",
    "scratch": "scratch",
}
COLORS = {
    "ligo": "tab:red",
    "ligo_lossless": "tab:purple",
    "lossless": "tab:orange",
    "stack": "tab:blue",
    "gstack": "tab:green",
    "hypercloning": "tab:olive",
    "llama_pro": "tab:cyan",
    "scratch": "tab:gray",
}


def _fmt_flops(x: float | None) -> str:
    if x is None:
        return "not reached"
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9)):
        if x >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.3g}"


def _fmt_s(x: float | None) -> str:
    if x is None:
        return "not reached"
    return f"{x:.1f} s" if x >= 10 else f"{x:.2f} s"


def _fmt_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f}%"


def _fmt_loss(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def verdict(result: Result) -> str:
    """Honest sentences on who wins, from the FLOPs-to-target column (small model excluded): each growth method's
    saving, then the ranking and whether the better LiGO method beats every non-LiGO growth method (one seed)."""
    rows = {r["method"]: r for r in result.summary()}
    lines = []
    for name, r in rows.items():
        if name == "scratch":
            continue
        label = SHORT_LABELS[name]
        if r["flops"] is None:
            lines.append(f"{label} does not reach scratch's final loss within the budget.")
            continue
        word = "saves" if r["flops_saved"] > 0 else "costs"
        lines.append(
            f"{label} {word} {abs(100 * r['flops_saved']):.1f}% FLOPs vs scratch "
            f"({abs(100 * r['flops_with_small_saved']):.1f}% "
            f"{'saved' if r['flops_with_small_saved'] > 0 else 'extra'} counting the small model)."
        )
    growth = [m for m in rows if m != "scratch"]
    if not growth:
        return " ".join(lines)
    score = {m: (-1e9 if rows[m]["flops_saved"] is None else rows[m]["flops_saved"]) for m in growth}
    ranked = sorted(growth, key=lambda m: -score[m])
    order = SHORT_LABELS[ranked[0]]
    for a, b in itertools.pairwise(ranked):  # equal savings (the same start, no operator steps) are a tie
        order += f" {'=' if score[b] == score[a] else '>'} {SHORT_LABELS[b]}"
    lines.append(f"Ranking: {order}.")
    ligos = [m for m in ranked if m in OPERATOR_METHODS]
    others = [m for m in growth if m not in OPERATOR_METHODS]
    if ligos and others:
        best, rival = ligos[0], max(score[m] for m in others)
        if score[best] > rival:
            lines.append(f"{SHORT_LABELS[best]} beats every non-LiGO growth method on this seed.")
        elif score[best] == rival:
            lines.append(f"{SHORT_LABELS[best]} ties the best non-LiGO growth method on this seed.")
        else:
            lines.append("LiGO does **not** beat every other growth method on this seed.")
    return " ".join(lines)


def format_table(result: Result) -> str:
    """The markdown results table (one row per method)."""
    head = (
        "| method | operator steps (FLOPs share) | loss at step 0 | final val loss | train steps to target "
        "| FLOPs to target | saved | speedup | FLOPs incl. small | saved | wall to target | saved | wall incl. small "
        "| saved |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in result.summary():
        steps = "not reached" if r["steps"] is None else f"{r['steps']:.0f}"
        op = f"{r['operator_steps']} ({100 * r['operator_share']:.1f}%)" if r["method"] in OPERATOR_METHODS else "-"
        lines.append(
            f"| {METHOD_LABELS[r['method']]} | {op} | {r['val_loss_start']:.4f} | {r['final_loss']:.4f} | {steps} "
            f"| {_fmt_flops(r['flops'])} | {_fmt_pct(r['flops_saved'])} | {_fmt_pct(r['speedup'])} "
            f"| {_fmt_flops(r['flops_with_small'])} "
            f"| {_fmt_pct(r['flops_with_small_saved'])} | {_fmt_s(r['wall_s'])} | {_fmt_pct(r['wall_s_saved'])} "
            f"| {_fmt_s(r['wall_with_small'])} | {_fmt_pct(r['wall_with_small_saved'])} |"
        )
    return head + "\n".join(lines) + "\n"


def _setup_lines(result: Result, command: str) -> list[str]:
    p, s = result.preset, result.seeds
    meta = result.meta or run_metadata(result.device)
    sm, lg = p.small, p.large
    ob, gs = result.operator_budget, result.schedules.get("grown", {})
    return [
        f"- command: `{command}`" if command else "- command: (library call)",
        f"- date: {meta['date']}; machine: {meta['machine']}; device `{result.device}`; "
        f"1-min load average at start {meta['load_average_at_start']} (a shared machine: wall times are noisy, "
        "FLOPs are not)",
        f"- versions: torch {meta['torch']}, transformers {meta['transformers']}, Python {meta['python']}",
        f"- seeds: split={s.split}, data={s.data}, small_init={s.small_init}, large_init={s.large_init}, ligo={s.ligo}",
        f"- corpus: {result.corpus}; byte-level tokens (vocab {VOCAB_SIZE})",
        f"- model family: {result.family}; small: L{sm.layers} d{sm.hidden} h{sm.heads} ffn{sm.ffn} "
        f"({result.small_params / 1e6:.2f}M params) -> large: L{lg.layers} d{lg.hidden} h{lg.heads} ffn{lg.ffn} "
        f"({result.large_params / 1e6:.2f}M params)",
        f"- tokens per parameter: each large model {result.tokens_per_param:.2f} "
        f"({p.large_steps * p.batch_size * p.seq_len:,} tokens / {result.large_params:,} params)",
        f"- budget: small {p.small_steps} steps; each large model {p.large_steps} steps of "
        f"{p.batch_size}x{p.seq_len} tokens (AdamW lr {p.lr}, wd {p.weight_decay}, warm-up {p.warmup_frac:.0%}, "
        f"cosine to {p.min_lr_frac:.0%}); grown models' schedule `{p.grown_schedule}` (warm-up {gs.get('warmup')} "
        f"steps, cosine floor reached at step {gs.get('decay_end')})",
        f"- LiGO operator (both LiGO rows): {ob['steps']} steps ({100 * ob['steps'] / ob['large_steps']:.1f}% of "
        f"the large steps; {ob['source']}, `ligo_fast.budget`), AdamW {_operator_lrs(result)}, no "
        f"weight decay, {ob['steps'] * p.batch_size * p.seq_len:,} extra tokens, counted in its FLOPs"
        f"{'' if p.ligo_train == 'all' else f'; trains the `{p.ligo_train}` tensors alone (ablation)'}; "
        f"lossless rows: depth `lossless`, width `{p.lossless_width}`",
    ]


def _operator_lrs(result: Result) -> str:
    """The operator's peak lr and warm-up per LiGO row (the rule picks them by the row's start), and its steps where
    they differ from the preset's (a depth-only growth from a function-preserving start trains none), else the
    budget's."""
    ob = result.operator_budget

    def steps(m) -> str:
        n = m.notes.get("operator_steps", ob["steps"])
        return "" if n == ob["steps"] else f"{n} steps (rule for this start), "

    rows = [
        f"{SHORT_LABELS[name]} {steps(m)}lr {m.notes['operator_lr']:g}, "
        f"warm-up {m.notes.get('operator_warmup', ob['warmup'])}"
        for name, m in result.methods.items()
        if "operator_lr" in m.notes
    ]
    return "; ".join(rows) if rows else f"lr {ob['lr']:g}, warm-up {ob['warmup']}"


def write_table(result: Result, path: str | os.PathLike, command: str = "") -> Path:
    """Write the markdown report (setup, table, verdict, loss trace, FLOP accounting) to ``path``."""
    p = result.preset
    fl = result.flops
    text = [
        f"# Growth savings: LiGO vs lossless expansion vs stacking vs scratch ({p.name} preset)\n",
        *_setup_lines(result, command),
        f"- total run time {result.total_wall_s / 60:.1f} min",
        f"- target: the validation loss scratch reaches at the end = **{result.target:.4f}** nats/byte\n",
        format_table(result),
        f"**Verdict:** {verdict(result)}\n",
        "Costs are to the *first* evaluation at or below the target (linear interpolation between evaluations, "
        f"every {p.eval_every} steps). 'saved' is relative to scratch's cost to the same target (LiGO's and "
        "LEMON's metric); 'speedup' is scratch's FLOPs over the method's, minus 1 (G_stack's metric). The LiGO "
        "rows include their operator steps; 'incl. small' adds the small model's pretraining "
        f"({_fmt_flops(result.small_flops)}, {result.small_wall_s:.1f} s) to the growth methods. Wall time "
        "counts training steps, growth and materialisation, not evaluation. 'loss at step 0': the large model's "
        "validation loss when its training starts (for LiGO: after the operator steps).\n",
        "## Loss trace (validation loss)\n",
        f"- small model after pretraining: {result.small_loss:.4f}",
    ]
    for name, m in result.methods.items():
        if name == "scratch":
            continue
        parts = [f"grown, before any training {_fmt_loss(m.notes.get('val_loss_grown'))}"]
        if "val_loss_after_operator" in m.notes:
            parts.append(f"after {m.operator_steps} operator steps {m.notes['val_loss_after_operator']:.4f}")
        tr = m.train_curve
        stride = max(1, len(tr) // 8)
        shown = tr[::stride] + ([tr[-1]] if tr[-1] is not tr[::stride][-1] else [])
        parts.append("training: " + ", ".join(f"{pt.step}: {pt.val_loss:.4f}" for pt in shown))
        text.append(f"- {SHORT_LABELS[name]}: " + "; ".join(parts))
    if "stack" in result.methods:
        text.append(
            "- (`width_init='sel'` copies old neurons into the new ones without splitting their outgoing weights, "
            "so a width-grown stacked model is not function-preserving)"
        )
    sp, lp = fl["small_per_token"], fl["large_per_token"]
    text += [
        "\n## FLOP accounting\n",
        "Forward FLOPs per token per layer: Q/K/V/O projections `2*d*a + 4*d*k + 2*a*d`, attention scores and "
        "weighted sum `4*T*a` (full TxT, no causal discount), MLP `3*2*d*f` (SwiGLU; GPT-2 `2*2*d*f`); plus "
        "the LM head `2*d*V` once. A training step is forward + backward = 3x forward over all tokens. An "
        "operator step is counted as it runs (`LiGOModel.linear_step_flops`): each grown linear in the form the "
        "operator picks for the batch, factored (`x B_in`, the small product, `B_out`: less than the plain layer) "
        "or produced (depth mix `2*L1*o1*i1`, new rows `2*(o2-o1)*o1*i1`, new columns `2*o2*(i2-i1)*i1`) and run, "
        "3x for forward + backward, plus the attention as in a plain step. Not counted: embeddings, norms, "
        "RoPE, elementwise ops, optimizer updates.\n",
        "| | qkvo/layer | attention/layer | mlp/layer | head | forward/token | train step |",
        "|---|---|---|---|---|---|---|",
        f"| small | {sp['qkvo']:,} | {sp['attention']:,} | {sp['mlp']:,} | {sp['head']:,} | {sp['total']:,} "
        f"| {fl['small_step']:,} |",
        f"| large | {lp['qkvo']:,} | {lp['attention']:,} | {lp['mlp']:,} | {lp['head']:,} | {lp['total']:,} "
        f"| {fl['large_step']:,} |",
        f"\nOperator step: {fl['operator_step']:,} FLOPs as run ({fl['operator_step'] / fl['large_step']:.2f}x a "
        f"large step; weight production forward {fl['production_forward']:,})."
        if fl["operator_step"]
        else "\nNo operator method was run.",
    ]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text) + "\n")
    return path


def plot(result: Result, path: str | os.PathLike) -> Path:
    """PNG: validation loss vs training FLOPs, one curve per method; left without, right with the small
    model's pretraining cost. The LiGO operator phase is drawn dotted; the dashed line is the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    colors = COLORS
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    all_losses = [pt.val_loss for m in result.methods.values() for pt in m.curve]
    for ax, with_small in zip(axes, (False, True), strict=True):
        if with_small:
            xs = [pt.flops for pt in result.small_curve]
            ax.plot(xs, [pt.val_loss for pt in result.small_curve], color="tab:green", lw=1, label="small model")
        for name, m in result.methods.items():
            off = result.small_flops if (with_small and name != "scratch") else 0.0
            op = [pt for pt in m.curve if pt.phase == "operator"]
            tr = [pt for pt in m.curve if pt.phase == "train"]
            if op:
                ax.plot([off + pt.flops for pt in op], [pt.val_loss for pt in op], ":", color=colors[name], lw=1.5)
            ax.plot(
                [off + pt.flops for pt in tr],
                [pt.val_loss for pt in tr],
                color=colors[name],
                lw=1.8,
                label=METHOD_LABELS[name],
            )
        ax.axhline(result.target, ls="--", color="k", lw=0.8, label=f"target {result.target:.3f}")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: _fmt_flops(x) if x > 0 else "0"))
        ax.set_xlabel("training FLOPs" + (" (incl. small model pretraining)" if with_small else ""))
        ax.set_title("including the small model" if with_small else "small model given (as in the paper)")
        ax.grid(alpha=0.3)
    lo = min(all_losses)
    hi = sorted(all_losses)[int(0.9 * (len(all_losses) - 1))]
    axes[0].set_ylim(lo - 0.05 * (hi - lo + 1e-9), hi + 0.3 * (hi - lo + 1e-9))
    axes[0].set_ylabel("validation loss (nats/byte)")
    axes[1].legend(fontsize=8)
    p = result.preset
    fig.suptitle(
        f"{result.family}: L{p.small.layers}/d{p.small.hidden} -> L{p.large.layers}/d{p.large.hidden}, "
        f"{p.large_steps} steps x {p.batch_size * p.seq_len} tokens ({p.name} preset, seed {result.base_seed})"
    )
    return _save(fig, path)


def write_json(result: Result, path: str | os.PathLike) -> Path:
    """All curves and settings as JSON (paths as strings)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_json(), indent=1, default=str))
    return path


# ------------------------------------------------------------------------------------------ several runs
def pct(x: float | None) -> str:
    """A share as a percentage with one decimal (0.623 -> "62.3"), "miss" for None (the target not reached)."""
    return "miss" if x is None else f"{100 * x:.1f}"


def _budget_label(row: dict) -> str:
    return f"{row['budget']:g}x ({row['large_steps']})"


def format_sweep(results: Sequence[Result], base_steps: int) -> str:
    """Markdown tables of several runs: FLOPs saved per budget and method (mean, sd, every seed), the winner and the
    LiGO leads per seed, the step-0 losses, and the goal check (:mod:`.aggregate`)."""
    rows = aggregate.sweep_rows(results, base_steps)
    seeds = sorted({r.base_seed for r in results})
    out = [
        "## FLOPs saved vs scratch, to scratch's final loss (%; small model excluded)\n",
        "| budget (large steps) | method | operator steps (FLOPs share) | mean ± sd | "
        + " | ".join(f"seed {s}" for s in seeds)
        + " | final loss (mean) |",
        "|---|---|---|---|" + "---|" * len(seeds) + "---|",
    ]
    for r in rows:
        if r["method"] == "scratch":
            continue
        ms = "-" if r["mean"] is None else f"{100 * r['mean']:.1f} ± {100 * r['sd']:.1f}"
        if r["reached"] < r["n"]:
            ms += f" ({r['reached']}/{r['n']} reached)"
        op = f"{r['operator_steps']} ({100 * r['operator_share']:.1f}%)" if r["method"] in OPERATOR_METHODS else "-"
        cells = " | ".join(pct(r["per_seed"].get(s)) if s in r["per_seed"] else "" for s in seeds)
        out.append(
            f"| {_budget_label(r)} | {SHORT_LABELS[r['method']]} | {op} | {ms} | {cells} | {r['final_loss']:.4f} |"
        )
    wins = aggregate.seed_wins(results)
    ligos = [m for m in OPERATOR_METHODS if any(m in w["lead"] for w in wins)]
    if wins:
        out += [
            "\n## Per seed: who saves most, and the LiGO methods' lead over the best non-LiGO growth method "
            "(percentage points)\n",
            "| budget (large steps) | seed | winner | " + " | ".join(f"{SHORT_LABELS[m]} lead" for m in ligos) + " |",
            "|---|---|---|" + "---|" * len(ligos),
        ]
        for w in wins:
            ge = ">=" if w.get("lead_is_bound") else ""
            leads = " | ".join("-" if w["lead"].get(m) is None else f"{ge}{100 * w['lead'][m]:+.1f}" for m in ligos)
            budget = w["large_steps"] / base_steps
            out.append(f"| {budget:g}x ({w['large_steps']}) | {w['seed']} | {SHORT_LABELS[w['winner']]} | {leads} |")
    starts = aggregate.start_losses(results)
    if starts:
        out += [
            "\n## Where each growth method's training starts: step-0 validation loss vs the small model's\n",
            "| method | small model (mean) | grown, before any training (mean) | large training's step 0 (mean) "
            "| step-0 gap to the small model: mean (max abs) |",
            "|---|---|---|---|---|",
        ]
        for m in [m for m in SHORT_LABELS if any(x["method"] == m for x in starts)]:
            xs = [x for x in starts if x["method"] == m]
            mean = {k: sum(x[k] for x in xs) / len(xs) for k in ("small", "grown", "start", "start_gap")}
            gap = max(abs(x["start_gap"]) for x in xs)
            out.append(
                f"| {SHORT_LABELS[m]} | {mean['small']:.4f} | {mean['grown']:.4f} | {mean['start']:.4f} "
                f"| {100 * mean['start_gap']:+.2f}% ({100 * gap:.2f}%) |"
            )
    g = aggregate.goal(results)
    out += ["\n## Goal check\n", goal_text(g, base_steps)]
    return "\n".join(out) + "\n"


def goal_text(g: dict, base_steps: int) -> str:
    """The goal check (:func:`.aggregate.goal`) in sentences."""
    if g["ligo"] is None:
        return "No LiGO method was run."
    lines = [
        f"Better LiGO method over all runs: **{SHORT_LABELS[g['ligo']]}**. Goal: it saves >= "
        f"{100 * aggregate.GOAL_SAVED:.0f}% FLOPs on average and more than every non-LiGO growth method on each seed, "
        f"at every budget; the lossless start within {100 * aggregate.GOAL_START_GAP:.0f}% of the small model's loss."
    ]
    for b in g["budgets"]:
        mean = "a miss on some seed" if b["mean"] is None else f"mean {100 * b['mean']:.1f}%, min {100 * b['min']:.1f}%"
        beats = "beats" if b["beats_all_seeds"] else "does not beat"
        beats += " the non-LiGO growth methods on every seed"
        lines.append(
            f"- {b['large_steps'] / base_steps:g}x ({b['large_steps']} steps): {mean}; {beats}: "
            f"**{'met' if b['met'] else 'not met'}**"
        )
    if g["start_gap_max"] is not None:
        lines.append(
            f"- lossless start: largest step-0 gap to the small model {100 * g['start_gap_max']:.2f}%: "
            f"**{'met' if g['start_ok'] else 'not met'}**"
        )
    lines.append(f"\n**Overall: {'met' if g['met'] else 'not met'}.**")
    return "\n".join(lines)


def write_sweep(results: Sequence[Result], path: str | os.PathLike, base_steps: int, command: str = "") -> Path:
    """Write the report of several runs (setup of the first, :func:`format_sweep`) to ``path``."""
    first = results[0]
    p = first.preset
    budgets = sorted({r.preset.large_steps for r in results})
    text = [
        f"# Growth savings over seeds and budgets ({p.name} preset)\n",
        *_setup_lines(first, command),
        f"- runs: seeds {', '.join(str(s) for s in sorted({r.base_seed for r in results}))} x budgets "
        f"{', '.join(f'{b / base_steps:g}x ({b} steps)' for b in budgets)}; the setup lines above are the first "
        f"run's (its budget and operator steps; the operator budget follows the rule at every budget); total "
        f"{sum(r.total_wall_s for r in results) / 60:.0f} min",
        "- 'saved': FLOPs to reach scratch's final validation loss (same seed, same budget), LiGO's operator "
        "steps included, the small model's pretraining not; 'miss': never reached it within the budget\n",
        format_sweep(results, base_steps),
    ]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text))
    return path


def plot_sweep(results: Sequence[Result], path: str | os.PathLike, base_steps: int) -> Path:
    """PNG: FLOPs saved vs the large-model budget, one line per growth method (mean, sd error bars, every seed as a
    dot); left without, right with the small model's pretraining."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = aggregate.by_budget(results)
    methods = [m for m in METHOD_LABELS if m != "scratch" and any(m in r.methods for r in results)]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, key in zip(axes, ("flops_saved", "flops_with_small_saved"), strict=True):
        for i, m in enumerate(methods):
            xs, means, sds = [], [], []
            for steps, runs in groups.items():
                vals = []
                for r in runs:
                    row = next((x for x in r.summary() if x["method"] == m), None)
                    if row is not None and row[key] is not None:
                        vals.append(100 * row[key])
                x = steps * (1 + 0.03 * (i - len(methods) / 2))  # small offsets keep the error bars apart
                ax.scatter([x] * len(vals), vals, s=10, color=COLORS[m], alpha=0.5)
                if vals:
                    xs.append(x)
                    means.append(sum(vals) / len(vals))
                    sds.append((sum((v - means[-1]) ** 2 for v in vals) / max(1, len(vals) - 1)) ** 0.5)
            ax.errorbar(xs, means, yerr=sds, color=COLORS[m], lw=1.8, capsize=3, marker="o", label=SHORT_LABELS[m])
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(groups), [f"{s / base_steps:g}x\n{s}" for s in groups])
        ax.set_xlabel("large-model budget (multiple of the preset, steps)")
        ax.set_title("small model given (as in the papers)" if key == "flops_saved" else "including the small model")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("FLOPs saved vs scratch to its final loss (%)")
    if methods:
        axes[0].legend(fontsize=8)
    p = results[0].preset
    seeds = sorted({r.base_seed for r in results})
    fig.suptitle(
        f"{results[0].family}: L{p.small.layers}/d{p.small.hidden} -> L{p.large.layers}/d{p.large.hidden} "
        f"({p.name} preset), seeds {', '.join(map(str, seeds))}: mean ± sd, dots = seeds; a miss is not drawn"
    )
    return _save(fig, path)


def write_sweep_json(results: Sequence[Result], path: str | os.PathLike, base_steps: int) -> Path:
    """The aggregate (:mod:`.aggregate`) of several runs and each run's ``summary``, as JSON."""
    data = {
        "base_steps": base_steps,
        "rows": aggregate.sweep_rows(results, base_steps),
        "seed_wins": aggregate.seed_wins(results),
        "start_losses": aggregate.start_losses(results),
        "goal": aggregate.goal(results),
        "runs": [
            {"seed": r.base_seed, "large_steps": r.preset.large_steps, "target": r.target, "summary": r.summary()}
            for r in results
        ],
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str))
    return path


def _save(fig, path) -> Path:
    """Write ``fig`` as a PNG to ``path`` (folders made), close it, return the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
