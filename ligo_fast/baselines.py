"""The growth baselines of the literature as named ligo_fast inits: each one is ``grow`` with fixed depth/width
schemes and no operator training, then ``materialize`` (:func:`grow_baseline`).

* ``gstack`` -- G_stack (Du et al., "Stacking Your Transformers: A Closer Look at Model Growth for Efficient LLM
  Pre-Training", NeurIPS 2024): depth by duplicating the small model's whole stack (large layer ``l`` is small
  layer ``l mod L1``: the ``stackbert`` depth scheme, the paper's growth factor 2 to 4), width by a
  function-preserving copy with noise (``lossless_noisy``).
* ``hypercloning`` -- HyperCloning (Samragh et al., "Scaling Smart: Accelerating Large Language Model
  Pre-Training with Small Model Initialization", 2024): width only, every neuron (and whole attention head)
  copied and its outgoing weights split so the large model computes the small one's function, plus a small
  noise that breaks the copies' symmetry (``lossless_noisy``). Refuses depth growth.
* ``llama_pro`` -- LLaMA-Pro block expansion (Wu et al., "LLaMA Pro: Progressive LLaMA with Block Expansion",
  ACL 2024): depth only, each added block a copy of the block before it with its output projections (attention
  output, MLP down) zeroed, so in a pre-norm model it is the identity (the ``lossless`` depth scheme, which
  zeroes exactly those rows). Refuses width growth.

The names say what each does; the papers' other choices (data, schedules, the growth step in training) are not
part of an init. ``BASELINES[name].options`` are the ``grow`` overrides, for use with an operator too.

Imports: the public ``api`` (grow, materialize) and ``config`` only.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .api import grow, materialize
from .config import LiGOConfig

DEPTH, WIDTH = "depth", "width"


@dataclass(frozen=True)
class Baseline:
    """A growth baseline: its ``grow`` init schemes, the axes it grows (``depth``, ``width``) and its source."""

    name: str
    depth_init: str
    width_init: str
    axes: tuple[str, ...]
    source: str

    @property
    def options(self) -> dict[str, str]:
        """The ``ligo_fast.grow`` overrides of this baseline."""
        return {"depth_init": self.depth_init, "width_init": self.width_init}


BASELINES: dict[str, Baseline] = {
    b.name: b
    for b in (
        Baseline("gstack", "stackbert", "lossless_noisy", (DEPTH, WIDTH), "Du et al., NeurIPS 2024 (G_stack)"),
        Baseline("hypercloning", "lossless", "lossless_noisy", (WIDTH,), "Samragh et al., 2024 (HyperCloning)"),
        Baseline("llama_pro", "lossless", "lossless", (DEPTH,), "Wu et al., ACL 2024 (LLaMA-Pro)"),
    )
}


def _sizes(config) -> tuple[int, int]:
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    return layers, hidden


def grown_axes(small_config, large_config) -> tuple[str, ...]:
    """The axes on which ``large_config`` grows ``small_config``: ``depth`` (more layers), ``width`` (a larger
    hidden size)."""
    (l1, d1), (l2, d2) = _sizes(small_config), _sizes(large_config)
    return tuple(a for a, grows in ((DEPTH, l2 != l1), (WIDTH, d2 != d1)) if grows)


def check_baseline(name: str, small_config, large_config) -> Baseline:
    """The baseline ``name``, checked to grow only along its axes (a one-line ValueError otherwise)."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    b = BASELINES[name]
    extra = [a for a in grown_axes(small_config, large_config) if a not in b.axes]
    if extra:
        raise ValueError(
            f"baseline {name!r} grows {' and '.join(b.axes)} only, but the large config grows {extra[0]} too"
        )
    return b


def grow_baseline(
    name: str, small_model: nn.Module, large_config, *, seed: int | None = None, config: LiGOConfig | None = None
) -> nn.Module:
    """The large model of baseline ``name`` (:data:`BASELINES`) grown from ``small_model`` (never modified): its
    init, no operator training, materialised. ``seed``: the noise draws' seed; ``config``: other operator options
    (noise levels), whose init schemes the baseline's replace."""
    b = check_baseline(name, small_model.config, large_config)
    extra = {} if seed is None else {"seed": seed}
    return materialize(grow(small_model, large_config, config, **b.options, **extra))
