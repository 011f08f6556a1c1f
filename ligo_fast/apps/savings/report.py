"""The experiment's outputs: the markdown table and report (:func:`format_table`, :func:`write_table`), the honest
:func:`verdict`, the plot (:func:`plot`: validation loss against FLOPs) and the JSON of everything (:func:`write_json`).

Imports :mod:`.results`, the vocabulary size of :mod:`.corpus`, and matplotlib when plotting.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .corpus import VOCAB_SIZE
from .results import Result, run_metadata

METHOD_LABELS = {
    "ligo": "LiGO (operator + materialise)",
    "stack": "Stacking (stackbert + sel, no operator)",
    "scratch": "Scratch (no growth)",
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


def verdict(result: Result, tie_tolerance: float = 0.02) -> str:
    """Honest sentences on who wins, from the FLOPs-to-target column (small model excluded). LiGO and
    stacking count as tied when their costs differ by less than ``tie_tolerance`` of scratch's cost."""
    rows = {r["method"]: r for r in result.summary()}
    lines = []
    lig, stk = rows.get("ligo"), rows.get("stack")
    for name, r in (("LiGO", lig), ("Stacking", stk)):
        if r is None:
            continue
        if r["flops"] is None:
            lines.append(f"{name} did not reach the scratch target loss within the budget.")
        else:
            word = "saves" if r["flops_saved"] > 0 else "costs"
            lines.append(
                f"{name} {word} {abs(100 * r['flops_saved']):.1f}% FLOPs vs scratch "
                f"({abs(100 * r['flops_with_small_saved']):.1f}% "
                f"{'saved' if r['flops_with_small_saved'] > 0 else 'extra'} counting the small model)."
            )
    if lig and stk:
        lf, sf = lig["flops"], stk["flops"]
        base = rows["scratch"]["flops"]
        if lf is None and sf is None:
            lines.append("Neither growth method reaches scratch's final loss at this scale.")
        elif lf is not None and sf is not None and abs(lf - sf) < tie_tolerance * base:
            lines.append(
                f"LiGO and stacking are within {100 * tie_tolerance:.0f}% of scratch's cost of each other: "
                "no clear winner between them at this scale (one seed)."
            )
        elif lf is not None and (sf is None or lf < sf):
            lines.append("LiGO beats stacking at this scale.")
        else:
            lines.append("LiGO does **not** beat stacking at this scale.")
    return " ".join(lines)


def format_table(result: Result) -> str:
    """The markdown results table (one row per method)."""
    head = (
        "| method | final val loss | train steps to target | FLOPs to target | saved | FLOPs to target incl. small "
        "| saved | wall to target | saved | wall incl. small | saved |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in result.summary():
        steps = "not reached" if r["steps"] is None else f"{r['steps']:.0f}"
        lines.append(
            f"| {METHOD_LABELS[r['method']]} | {r['final_loss']:.4f} | {steps} | {_fmt_flops(r['flops'])} "
            f"| {_fmt_pct(r['flops_saved'])} | {_fmt_flops(r['flops_with_small'])} "
            f"| {_fmt_pct(r['flops_with_small_saved'])} | {_fmt_s(r['wall_s'])} | {_fmt_pct(r['wall_s_saved'])} "
            f"| {_fmt_s(r['wall_with_small'])} | {_fmt_pct(r['wall_with_small_saved'])} |"
        )
    return head + "\n".join(lines) + "\n"


def write_table(result: Result, path: str | os.PathLike, command: str = "", date: str | None = None) -> Path:
    """Write the markdown report (setup, table, verdict, LiGO trace, FLOP accounting) to ``path``."""
    p, s = result.preset, result.seeds
    meta = result.meta or run_metadata(result.device)
    date = date or meta["date"]
    fl = result.flops
    trace = result.ligo_trace
    sm, lg = p.small, p.large
    text = [
        f"# Growth savings: LiGO vs stacking vs scratch ({p.name} preset)\n",
        f"- command: `{command}`" if command else "- command: (library call)",
        f"- date: {date}; machine: {meta['machine']}; device `{result.device}`; "
        f"total run time {result.total_wall_s / 60:.1f} min; 1-min load average at start "
        f"{meta['load_average_at_start']} (a shared machine: wall times are noisy, FLOPs are not)",
        f"- versions: torch {meta['torch']}, transformers {meta['transformers']}, Python {meta['python']}",
        f"- seeds: split={s.split}, data={s.data}, small_init={s.small_init}, large_init={s.large_init}, ligo={s.ligo}",
        f"- corpus: {result.corpus}; byte-level tokens (vocab {VOCAB_SIZE})",
        f"- model family: {result.family}; small: L{sm.layers} d{sm.hidden} h{sm.heads} ffn{sm.ffn} "
        f"({result.small_params / 1e6:.2f}M params) -> large: L{lg.layers} d{lg.hidden} h{lg.heads} ffn{lg.ffn} "
        f"({result.large_params / 1e6:.2f}M params)",
        f"- budget: small {p.small_steps} steps; each large model {p.large_steps} steps of "
        f"{p.batch_size}x{p.seq_len} tokens (AdamW lr {p.lr}, wd {p.weight_decay}, warm-up {p.warmup_frac:.0%}, "
        f"cosine to {p.min_lr_frac:.0%}); LiGO operator {p.ligo_steps} steps (AdamW lr {p.ligo_lr}, "
        f"{p.ligo_steps * p.batch_size * p.seq_len:,} extra tokens, counted in its FLOPs)",
        f"- target: the validation loss scratch reaches at the end = **{result.target:.4f}** nats/byte\n",
        format_table(result),
        f"**Verdict:** {verdict(result)}\n",
        "Costs are to the *first* evaluation at or below the target (linear interpolation between evaluations, "
        f"every {p.eval_every} steps). 'saved' is relative to scratch's cost to the same target. The LiGO "
        "row includes its operator steps; 'incl. small' adds the small model's pretraining "
        f"({_fmt_flops(result.small_flops)}, {result.small_wall_s:.1f} s) to the growth methods. Wall time "
        "counts training steps, growth and materialisation, not evaluation.\n",
        "## LiGO trace (validation loss)\n",
        f"- small model after pretraining: {trace.get('small', float('nan')):.4f}",
    ]
    if "grown_before_operator" in trace:
        text += [
            f"- grown model before operator training: {trace['grown_before_operator']:.4f}",
            f"- after {p.ligo_steps} operator steps, materialised: {trace['after_operator_materialized']:.4f}",
        ]
        steps = sorted(int(k.rsplit("_", 1)[1]) for k in trace if k.startswith("train_step_"))
        if steps:
            text.append(
                "- during training: " + ", ".join(f"step {st}: {trace[f'train_step_{st}']:.4f}" for st in steps)
            )
    if "stack" in result.methods:
        text.append(
            f"- (stacking, grown, before training: {result.methods['stack'].notes['val_loss_grown']:.4f}; "
            "`width_init='sel'` copies old neurons into the new ones without splitting their outgoing weights, "
            "so a width-grown stacked model is not function-preserving)"
        )
    sp, lp = fl["small_per_token"], fl["large_per_token"]
    text += [
        "\n## FLOP accounting\n",
        "Forward FLOPs per token per layer: Q/K/V/O projections `2*d*a + 4*d*k + 2*a*d`, attention scores and "
        "weighted sum `4*T*a` (full TxT, no causal discount), MLP `3*2*d*f` (SwiGLU; GPT-2 `2*2*d*f`); plus "
        "the LM head `2*d*V` once. A training step is forward + backward = 3x forward over all tokens. An "
        "operator step is a large training step plus 3x the weight production (depth mix `2*L1*o1*i1`, new rows "
        "`2*(o2-o1)*o1*i1`, new columns `2*o2*(i2-i1)*i1` per produced tensor). Not counted: embeddings, norms, "
        "RoPE, elementwise ops, optimizer updates.\n",
        "| | qkvo/layer | attention/layer | mlp/layer | head | forward/token | train step |",
        "|---|---|---|---|---|---|---|",
        f"| small | {sp['qkvo']:,} | {sp['attention']:,} | {sp['mlp']:,} | {sp['head']:,} | {sp['total']:,} "
        f"| {fl['small_step']:,} |",
        f"| large | {lp['qkvo']:,} | {lp['attention']:,} | {lp['mlp']:,} | {lp['head']:,} | {lp['total']:,} "
        f"| {fl['large_step']:,} |",
        f"\nOperator step: {fl['operator_step']:,} FLOPs (weight production forward {fl['production_forward']:,}).",
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

    colors = {"ligo": "tab:red", "stack": "tab:blue", "scratch": "tab:gray"}
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
        f"{p.large_steps} steps x {p.batch_size * p.seq_len} tokens ({p.name} preset)"
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_json(result: Result, path: str | os.PathLike) -> Path:
    """All curves and settings as JSON (paths as strings)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_json(), indent=1, default=str))
    return path
