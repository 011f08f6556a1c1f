"""Sizes, budgets and seeds of the growth-savings experiment: :data:`PRESETS` (``toy`` for the tests, ``demo`` for
``make demo``, ``gpu-small``/``gpu-base`` for one GPU), :class:`Seeds`, and the methods compared (:data:`METHODS`).

Plain data; imports only the standard library.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

METHODS = ("ligo", "stack", "scratch")


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
        ligo_steps: operator training steps (LiGO only).
        lr, small_lr, ligo_lr: peak AdamW learning rates (large models, small model, operator).
        weight_decay: AdamW weight decay of model weights (the operator uses none).
        warmup_frac: linear warm-up fraction of each run; then cosine decay to ``min_lr_frac * peak``.
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
    ligo_steps: int = 100
    family: str = "llama"
    lr: float = 2e-3
    small_lr: float = 3e-3
    ligo_lr: float = 2e-3
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
        ligo_steps=4,
        eval_every=4,
        ligo_eval_every=2,
        eval_batches=2,
        val_fraction=0.25,
    ),
    # ~3 minutes on 2 idle CPU cores, ~6-7 on a shared, loaded one (`make demo`)
    "demo": Preset(
        name="demo",
        small=ModelSize(hidden=64, layers=2, heads=2, ffn=176),
        large=ModelSize(hidden=128, layers=4, heads=4, ffn=352),
        seq_len=128,
        batch_size=16,
        small_steps=300,
        large_steps=400,
        ligo_steps=100,
        eval_every=20,
        ligo_eval_every=20,
        eval_batches=4,
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
        ligo_steps=100,
        lr=1e-3,
        small_lr=2e-3,
        ligo_lr=1e-3,
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
        ligo_steps=100,
        lr=6e-4,
        small_lr=1e-3,
        ligo_lr=1e-3,
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
    ligo: int = 4  # operator initial draws (LiGO and stacking)

    @classmethod
    def from_base(cls, base: int) -> Seeds:
        return cls(base, base + 1, base + 2, base + 3, base + 4)
