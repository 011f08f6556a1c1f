"""The growth-savings experiment: how much training compute does growing from a small model save?

Pipeline (``run_experiment``):

1. **Data.** Real text, no network: by default the ``*.py`` files of the Python standard library on this
   machine (``sysconfig.get_paths()['stdlib']``, ``site-packages``/``dist-packages`` excluded), or any file or
   directory of text files (:mod:`.corpus`). Byte-level tokens (ids 0..255) plus specials (``EOS`` ends every
   file). The validation set is a fixed, seeded set of whole *files*; a single file is split by bytes.
2. **Small model.** A small causal LM (Llama-style by default) is pretrained on the training split.
   Sizes, budgets and seeds: :mod:`.presets`.
3. **Large models**, one per method (:data:`.presets.METHODS`: ``ligo``, ``ligo_lossless``, ``lossless``,
   ``stack``, ``scratch``), all trained afterwards with the same AdamW, batches and token budget; every grown model
   under the same schedule (:func:`.schedule.grown_schedule`). The two LiGO methods first train their operator for
   the budget :func:`ligo_fast.budget.operator_budget` derives from the large budget (same batches for both), then
   :func:`ligo_fast.materialize`.
4. **Accounting.** Training FLOPs are counted analytically (:mod:`.flops`); wall time is measured around the
   training steps (evaluation excluded). For each method: the FLOPs and wall time needed to reach the validation
   loss that ``scratch`` reaches at the end, with and without the small model's pretraining cost, and the % saved
   against ``scratch``.
5. **Outputs.** :mod:`.report`: the markdown table, the verdict, the plot (validation loss vs FLOPs) and JSON;
   several seeds and budgets: :mod:`.aggregate`.

This module holds :func:`run_experiment` (the pipeline) only; it logs through :mod:`logging` and shows
:class:`~ligo_fast.apps.progress.Progress`. It imports the other modules of this package, ``ligo_fast.apps``'
``data`` and ``progress``, and ligo_fast's public ``grow``/``materialize`` and ``budget``. The command line is
:mod:`ligo_fast.apps.demo` (``make demo``; ``benchmarks/growth_savings.py`` is the same command line).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence

import torch

import ligo_fast
from ligo_fast.baselines import BASELINES, check_baseline
from ligo_fast.budget import OperatorBudget, operator_budget

from ..data import validation_windows
from ..progress import Progress
from .corpus import load_corpus
from .flops import forward_flops_per_token, operator_step_flops, production_flops, train_step_flops
from .models import grown_config, make_config, model_class, new_model, param_count
from .presets import ALL_METHODS, LIGO_TRAIN, METHODS, OPERATOR_METHODS, PRESETS, Preset, Seeds
from .results import MethodResult, Result, run_metadata
from .schedule import grown_schedule, operator_schedule, run_schedule
from .train import EvalPoint, evaluate, sync, train

logger = logging.getLogger(__name__)


def budget_of(p: Preset, preserved_width: int | None = None, widens: bool = True) -> OperatorBudget:
    """The operator budget of ``p``: the rule of :func:`ligo_fast.budget.operator_budget` for ``p.large_steps`` and
    ``p.lr`` (with ``preserved_width``, the grown model's ``LiGOModel.preserved_width``: the continued-training lr of
    a function-preserving start; with ``widens`` False, the grown model's ``LiGOModel.widens``, a depth-only growth
    from such a start trains no operator), or the preset's overrides (``ligo_steps``/``ligo_fraction``, ``ligo_lr``)."""
    b = operator_budget(
        p.large_steps, p.lr, fraction=p.ligo_fraction, steps=p.ligo_steps, preserved_width=preserved_width,
        widens=widens,
    )  # fmt: skip
    return b if p.ligo_lr is None else dataclasses.replace(b, lr=p.ligo_lr)


def grow_options(method: str, p: Preset) -> dict | None:
    """The ``ligo_fast.grow`` init options of a growth method (None for ``scratch``)."""
    lossless = {"depth_init": "lossless", "width_init": p.lossless_width}
    return {
        "ligo": {"depth_init": "stackbert_noisy", "width_init": "rand"},  # the official defaults
        "ligo_lossless": lossless,
        "lossless": lossless,
        "stack": {"depth_init": "stackbert", "width_init": "sel"},
        **{name: b.options for name, b in BASELINES.items()},
        "scratch": None,
    }[method]


def trained_tensors(op_model: ligo_fast.LiGOModel, part: str) -> list[torch.Tensor]:
    """The operator parameters of ``part`` (:data:`~.presets.LIGO_TRAIN`); the others are frozen
    (``requires_grad_(False)``, so backward computes no gradient for them)."""
    if part not in LIGO_TRAIN:
        raise ValueError(f"ligo_train must be one of {', '.join(LIGO_TRAIN)}, got {part!r}")
    out = []
    for t in op_model.plan.tensors:
        if t.trainable:
            q = op_model.tensor(t.name)
            q.requires_grad_(t.role in LIGO_TRAIN[part])
            out += [q] if q.requires_grad else []
    return out


def check_methods(methods: Sequence[str]) -> list[str]:
    """``methods`` in :data:`ALL_METHODS` order, with ``scratch`` added (it defines the target); unknown names
    raise."""
    bad = sorted(set(methods) - set(ALL_METHODS))
    if bad:
        raise ValueError(f"unknown method(s) {', '.join(bad)}; choose from {', '.join(ALL_METHODS)}")
    return [m for m in ALL_METHODS if m in set(methods) | {"scratch"}]


def run_experiment(
    preset: Preset | str = "demo",
    *,
    corpus: str | os.PathLike | None = None,
    device: str = "cpu",
    seeds: Seeds | None = None,
    methods: Sequence[str] = METHODS,
    family: str | None = None,
    progress: bool = True,
    on_event: Callable[[str, dict], None] | None = None,
) -> Result:
    """Run the whole experiment (see the module docstring) and return its measurements.

    Args:
        preset: a :class:`Preset` or a name in :data:`PRESETS`.
        corpus: text file or directory; None: the Python stdlib's ``*.py`` files.
        device: torch device (``cuda`` trains in bf16 autocast).
        seeds: all seeds (default ``Seeds()``).
        methods: subset of :data:`METHODS`; ``scratch`` is always run (it defines the target).
        family: ``llama``/``gpt2``; None: ``preset.family``.
        progress: show progress (a tqdm bar on a terminal, else a log line at each evaluation).
        on_event: called with ``(name, data)`` at milestones for live printing: ``small_done``; per growth method
            ``grown`` (loss before any training); per LiGO method ``operator_eval`` and ``materialized``; per method
            ``method_eval`` and ``method_done``. ``data`` names the ``method``.
    """
    p = PRESETS[preset] if isinstance(preset, str) else preset
    seeds = seeds or Seeds()
    methods = check_methods(methods)
    family = family or p.family
    dev = torch.device(device)
    emit = on_event or (lambda name, data: None)
    t_start = time.perf_counter()
    meta = run_metadata(device)
    budget = budget_of(p)
    large_sched = run_schedule(p, p.large_steps, p.lr)
    grown_sched = grown_schedule(p)

    data = load_corpus(corpus, p.val_fraction, seeds.split, p.max_files)
    logger.info("corpus %s", data.describe())
    val = validation_windows(data.val, p.eval_batches * p.batch_size, p.seq_len + 1)
    small_cfg = make_config(p.small, p.seq_len, family)
    large_cfg = grown_config(small_cfg, p.large)
    for name in set(methods) & set(BASELINES):  # a baseline grows only its axes: refuse before any training
        check_baseline(name, small_cfg, large_cfg)
    common = dict(batch_size=p.batch_size, seq_len=p.seq_len)

    small_step = train_step_flops(small_cfg, p.batch_size, p.seq_len)
    large_step = train_step_flops(large_cfg, p.batch_size, p.seq_len)
    n_operator = sum(m in OPERATOR_METHODS for m in methods)
    total_steps = p.small_steps + len(methods) * p.large_steps + n_operator * budget.steps
    pbar = Progress(total_steps, enabled=progress, log=logger)

    # 1. the small model
    pbar.set_description("small pretrain")
    small = new_model(small_cfg, seeds.small_init, dev)
    small_curve = train(
        small,
        list(small.parameters()),
        data.train,
        val,
        steps=p.small_steps,
        schedule=run_schedule(p, p.small_steps, p.small_lr),
        weight_decay=p.weight_decay,
        data_seed=seeds.data + 1000,
        flops_per_step=small_step,
        eval_every=p.eval_every,
        phase="small",
        progress=pbar,
        **common,
    )
    small_wall = small_curve[-1].wall_s
    small_flops = small_curve[-1].flops
    small.eval()
    emit("small_done", {"val_loss": small_curve[-1].val_loss, "flops": small_flops, "wall_s": small_wall})

    blank_large = model_class(family)(large_cfg)
    large_params = param_count(blank_large)
    produce = production_flops(small, blank_large)
    del blank_large
    op_step = 0  # one operator step's FLOPs in the forms it runs (per method: its notes; here the last one's)
    results: dict[str, MethodResult] = {}

    for name in methods:
        setup_flops, setup_wall, pre_curve, notes = 0.0, 0.0, [], {}
        options = grow_options(name, p)
        pbar.set_description(name)
        sync(dev)
        t0 = time.perf_counter()
        if options is None:
            large = new_model(large_cfg, seeds.large_init, dev)
        elif name not in OPERATOR_METHODS:
            large = ligo_fast.materialize(ligo_fast.grow(small, large_cfg, seed=seeds.ligo, **options))
            sync(dev)
            setup_wall = time.perf_counter() - t0
            notes["val_loss_grown"] = evaluate(large, val, p.batch_size)
            emit("grown", {"method": name, "val_loss": notes["val_loss_grown"]})
        else:
            op_model = ligo_fast.grow(small, large_cfg, seed=seeds.ligo, **options)
            sync(dev)
            grow_wall = time.perf_counter() - t0
            op_params = trained_tensors(op_model, p.ligo_train)
            op_params_n = notes["operator_params"] = sum(q.numel() for q in op_params)
            op_step = notes["operator_step_flops"] = operator_step_flops(op_model, large_cfg, p.batch_size, p.seq_len)
            # the rule for this start (ligo_fast.budget): its lr, and no steps for a depth-only function-preserving one
            op_budget = budget_of(p, op_model.preserved_width, op_model.widens)
            notes["operator_lr"], notes["operator_warmup"] = op_budget.lr, op_budget.warmup
            notes["operator_steps"] = op_budget.steps
            pbar.set_description(f"{name} operator")
            pre_curve = train(
                op_model,
                op_params,
                data.train,
                val,
                steps=op_budget.steps,
                schedule=operator_schedule(op_budget, p.min_lr_frac),
                weight_decay=0.0,
                data_seed=seeds.data + 2000,
                flops_per_step=op_step,
                eval_every=p.ligo_eval_every,
                phase="operator",
                wall_offset=grow_wall,
                progress=pbar,
                on_eval=lambda pt, name=name: emit("operator_eval", {"method": name, **dataclasses.asdict(pt)}),
                **common,
            )
            notes["val_loss_grown"] = pre_curve[0].val_loss  # step 0: before any operator step
            emit("grown", {"method": name, "val_loss": pre_curve[0].val_loss, "operator_params": op_params_n})
            sync(dev)
            t0 = time.perf_counter()
            large = ligo_fast.materialize(op_model).train()
            sync(dev)
            setup_wall = pre_curve[-1].wall_s + time.perf_counter() - t0
            setup_flops = pre_curve[-1].flops
            del op_model, op_params
            notes["val_loss_after_operator"] = evaluate(large, val, p.batch_size)
            emit("materialized", {"method": name, "val_loss": notes["val_loss_after_operator"], "flops": setup_flops})
        pbar.set_description(name)

        def on_eval(pt: EvalPoint, name=name) -> None:
            emit("method_eval", {"method": name, **dataclasses.asdict(pt)})

        curve = train(
            large,
            list(large.parameters()),
            data.train,
            val,
            steps=p.large_steps,
            schedule=large_sched if options is None else grown_sched,
            weight_decay=p.weight_decay,
            data_seed=seeds.data,
            flops_per_step=large_step,
            eval_every=p.eval_every,
            phase="train",
            flops_offset=setup_flops,
            wall_offset=setup_wall,
            progress=pbar,
            on_eval=on_eval,
            **common,
        )
        results[name] = MethodResult(name, pre_curve + curve, setup_flops, setup_wall, notes)
        emit("method_done", {"method": name, "final_loss": curve[-1].val_loss})
        del large
    pbar.close()

    return Result(
        preset=p,
        seeds=seeds,
        family=family,
        device=str(dev),
        corpus=data.describe(),
        small_params=param_count(small),
        large_params=large_params,
        small_curve=small_curve,
        small_flops=small_flops,
        small_wall_s=small_wall,
        methods=results,
        flops={
            "small_step": small_step,
            "large_step": large_step,
            "operator_step": op_step,
            "production_forward": produce,
            "small_per_token": forward_flops_per_token(small_cfg, p.seq_len),
            "large_per_token": forward_flops_per_token(large_cfg, p.seq_len),
        },
        operator_budget=dataclasses.asdict(budget),
        schedules={"large": dataclasses.asdict(large_sched), "grown": dataclasses.asdict(grown_sched)},
        total_wall_s=time.perf_counter() - t_start,
        meta=meta,
    )
