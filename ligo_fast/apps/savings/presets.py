"""Sizes, budgets and seeds of the growth-savings experiment: :data:`PRESETS` (``toy`` for the tests, ``demo`` for
``make demo``, ``gpu-small``/``gpu-base`` for one GPU; ``pretrained`` and ``pretrained-toy``: the pretrained regime,
a small model trained long enough to be hard to beat), :class:`Seeds`, and the methods compared (:data:`METHODS`).

The pretrained regime exists because the ``demo`` small model (4.6 training tokens per parameter) is too weak to
reject defaults that real checkpoints reject (issue 19): its ``pretrained`` twin trains the same small model for
61 tokens per parameter (3x Chinchilla's 20; real small checkpoints are trained far longer still), so a growth
that damages the small model's function shows as a start above the small model's loss that the large model must
first win back.

The methods (every large model then trains with the same optimizer, schedule, batches and token budget):

* ``ligo``: LiGO's operator with its official default init (``stackbert_noisy`` depth, ``rand`` width), trained
  for the operator budget, then materialised;
* ``ligo_lossless``: the same operator training started from the function-preserving init (``lossless`` depth,
  ``Preset.lossless_width``);
* ``lossless``: the function-preserving init materialised directly, no operator steps (the HyperCloning/LEMON-style
  expansion);
* ``stack``: StackBERT-style stacking (``stackbert`` depth, ``sel`` width: new neurons copy old ones without
  splitting their outgoing weights, so not function-preserving), no operator steps;
* ``scratch``: random initialisation; it defines the target loss and is always run.

Not in the default set (:data:`BASELINE_METHODS`, name them with ``methods``): the literature's baselines of
:mod:`ligo_fast.baselines` (``gstack``, ``hypercloning``, ``llama_pro``), each its init, no operator steps; a
baseline runs only on the axes it grows. Axis-separated presets (depth only, width only): :func:`axis_presets`.

Plain data; imports only the standard library.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

METHODS = ("ligo", "ligo_lossless", "lossless", "stack", "scratch")
OPERATOR_METHODS = ("ligo", "ligo_lossless")
LIGO_TRAIN = {"all": ("depth", "width", "residual", "small"), "depth": ("depth",), "width": ("width", "residual")}
"""``Preset.ligo_train`` -> the roles (``ligo_fast.plan.Role``) of the operator tensors the operator phase trains."""
BASELINE_METHODS = ("gstack", "hypercloning", "llama_pro")
ALL_METHODS = (*METHODS[:-1], *BASELINE_METHODS, "scratch")
"""Every method the experiment knows, in run order (scratch last)."""


@dataclass(frozen=True)
class ModelSize:
    """Shape of one causal LM. ``heads`` query heads (and as many key/value heads); ``ffn`` the MLP width."""

    hidden: int
    layers: int
    heads: int
    ffn: int


@dataclass(frozen=True)
class Preset:
    """Sizes and budgets of one experiment.

    Attributes:
        family: ``llama`` (LlamaForCausalLM) or ``gpt2`` (GPT2LMHeadModel).
        small, large: model shapes (head size ``hidden // heads`` is kept equal, as BERT-Small -> Base does).
        seq_len, batch_size: every step (small, operator, large) sees ``batch_size * seq_len`` tokens.
        small_steps: pretraining steps of the small model.
        large_steps: training steps of each large model (the shared token budget).
        ligo_steps, ligo_fraction: override the operator budget rule (``ligo_fast.budget.operator_budget``) with a
            step count or a share of ``large_steps``; None (both): the rule.
        ligo_lr: override the operator's peak learning rate (None: the rule's, ``lr``).
        lr, small_lr: peak AdamW learning rates of the large models and the small model.
        grown_schedule: the learning-rate schedule of every grown model (``schedule.GROWN_SCHEDULES``).
        lossless_width: width init of ``lossless`` and ``ligo_lossless`` (``lossless_noisy`` or ``lossless``).
        ligo_train: which operator tensors the operator phase trains (:data:`LIGO_TRAIN`): ``all``, ``depth`` (the
            depth coefficients alone) or ``width`` (the width matrices and residuals alone); an ablation.
        weight_decay: AdamW weight decay of model weights (the operator uses none).
        warmup_frac: linear warm-up fraction of the small and large runs; then cosine decay to ``min_lr_frac * peak``
            (the operator's: ``min_lr_frac`` too).
        eval_every: validation every this many large/small steps (operator: ``ligo_eval_every``).
        eval_batches: validation batches (of ``batch_size`` windows each), a fixed set.
        val_fraction: share of files held out for validation.
        max_files: use only this many corpus files (after sorting; None: all).
    """

    name: str
    small: ModelSize
    large: ModelSize
    seq_len: int
    batch_size: int
    small_steps: int
    large_steps: int
    ligo_steps: int | None = None
    ligo_fraction: float | None = None
    ligo_lr: float | None = None
    family: str = "llama"
    lr: float = 2e-3
    small_lr: float = 3e-3
    grown_schedule: str = "same"
    lossless_width: str = "lossless_noisy"
    ligo_train: str = "all"
    weight_decay: float = 0.1
    warmup_frac: float = 0.05
    min_lr_frac: float = 0.1
    eval_every: int = 25
    ligo_eval_every: int = 25
    eval_batches: int = 4
    val_fraction: float = 0.05
    max_files: int | None = None

    def replace(self, **kw) -> Preset:
        return dataclasses.replace(self, **kw)

    @property
    def small_tokens(self) -> int:
        """Tokens the small model is pretrained on (``small_steps * batch_size * seq_len``)."""
        return self.small_steps * self.batch_size * self.seq_len

    def scaled(self, multiplier: float) -> Preset:
        """This preset with ``round(multiplier * large_steps)`` large steps (at least 1); everything else kept (the
        operator budget rule then follows the new ``large_steps``)."""
        if not (multiplier > 0):
            raise ValueError(f"a budget multiplier must be > 0, got {multiplier!r}")
        return self.replace(large_steps=max(1, round(multiplier * self.large_steps)))


PRESETS: dict[str, Preset] = {
    # seconds on a CPU: the unit tests
    "toy": Preset(
        name="toy",
        small=ModelSize(hidden=16, layers=1, heads=2, ffn=32),
        large=ModelSize(hidden=32, layers=2, heads=4, ffn=64),
        seq_len=32,
        batch_size=4,
        small_steps=12,
        large_steps=12,
        ligo_steps=4,  # the rule's floor (10) would be most of this tiny budget
        eval_every=4,
        ligo_eval_every=2,
        eval_batches=2,
        val_fraction=0.25,
    ),
    # ~5 minutes on 2 idle CPU cores, ~10 on a shared, loaded one (`make demo`: five methods)
    "demo": Preset(
        name="demo",
        small=ModelSize(hidden=64, layers=2, heads=2, ffn=176),
        large=ModelSize(hidden=128, layers=4, heads=4, ffn=352),
        seq_len=128,
        batch_size=16,
        small_steps=300,
        large_steps=400,
        eval_every=20,
        ligo_eval_every=10,
        eval_batches=4,
    ),
    # the pretrained regime (`python -m ligo_fast.apps.demo --preset pretrained`): the demo's shapes, the small model
    # trained 4000 steps = 8.2M tokens = 61 tokens per parameter (134,464 parameters); ~15-20 minutes on 2 CPU cores
    "pretrained": Preset(
        name="pretrained",
        small=ModelSize(hidden=64, layers=2, heads=2, ffn=176),
        large=ModelSize(hidden=128, layers=4, heads=4, ffn=352),
        seq_len=128,
        batch_size=16,
        small_steps=4000,
        large_steps=400,
        eval_every=20,
        ligo_eval_every=10,
        eval_batches=4,
    ),
    # the pretrained regime in seconds (the unit tests): the toy's shapes, 440 small steps of 16 x 32 tokens = 225k
    # tokens = 20.4 tokens per parameter (11,056 parameters)
    "pretrained-toy": Preset(
        name="pretrained-toy",
        small=ModelSize(hidden=16, layers=1, heads=2, ffn=32),
        large=ModelSize(hidden=32, layers=2, heads=4, ffn=64),
        seq_len=32,
        batch_size=16,
        small_steps=440,
        large_steps=12,
        ligo_steps=4,
        eval_every=300,
        ligo_eval_every=2,
        eval_batches=2,
        val_fraction=0.25,
    ),
    # a few minutes on one H200 (`--device cuda`)
    "gpu-small": Preset(
        name="gpu-small",
        small=ModelSize(hidden=256, layers=4, heads=4, ffn=688),
        large=ModelSize(hidden=512, layers=8, heads=8, ffn=1376),
        seq_len=512,
        batch_size=64,
        small_steps=1500,
        large_steps=1500,
        lr=1e-3,
        small_lr=2e-3,
        eval_every=100,
        ligo_eval_every=25,
        eval_batches=8,
    ),
    # BERT-Small -> BERT-Base shapes (L4/d512 -> L12/d768), as in the paper, on one H200
    "gpu-base": Preset(
        name="gpu-base",
        small=ModelSize(hidden=512, layers=4, heads=8, ffn=1376),
        large=ModelSize(hidden=768, layers=12, heads=12, ffn=2048),
        seq_len=512,
        batch_size=64,
        small_steps=1500,
        large_steps=1000,
        lr=6e-4,
        small_lr=1e-3,
        eval_every=100,
        ligo_eval_every=25,
        eval_batches=8,
    ),
}


@dataclass(frozen=True)
class Seeds:
    """Every seed the experiment uses (all printed and written to the table)."""

    split: int = 0  # which files are held out
    data: int = 1  # batch sampling (identical batch sequence for every large model)
    small_init: int = 2  # small model initialisation
    large_init: int = 3  # scratch model initialisation
    ligo: int = 4  # the operator's initial draws (LiGO, stacking's sel, the lossless noise)

    @classmethod
    def from_base(cls, base: int) -> Seeds:
        return cls(base, base + 1, base + 2, base + 3, base + 4)


def axis_presets(base: Preset) -> dict[str, Preset]:
    """``base`` split by growth axis, with the same small model, budgets and seeds: ``<name>-depth2`` and
    ``<name>-depth4`` (2x and 4x the small model's layers, its width kept), ``<name>-width`` (the large model's
    hidden size, heads and MLP width, the small model's layers); ``base`` itself grows both."""
    sm, lg = base.small, base.large
    return {
        f"{base.name}-depth2": base.replace(
            name=f"{base.name}-depth2", large=dataclasses.replace(sm, layers=2 * sm.layers)
        ),
        f"{base.name}-depth4": base.replace(
            name=f"{base.name}-depth4", large=dataclasses.replace(sm, layers=4 * sm.layers)
        ),
        f"{base.name}-width": base.replace(name=f"{base.name}-width", large=dataclasses.replace(lg, layers=sm.layers)),
    }


PRESETS.update(axis_presets(PRESETS["demo"]))
