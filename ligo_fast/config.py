"""Options of the LiGO growth operator."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .init import DEPTH_INITS, WIDTH_INITS

LINEAR_MODES = ("materialize", "factored", "auto")
REMOVED_OPTIONS = frozenset({"lean_min_mb"})  # saved by older versions; memory-lean mode now decides from memory


@dataclass
class LiGOConfig:
    """How the growth operator is initialised and what it trains.

    Attributes:
        depth_init: initial depth coefficients of each large layer (a vector over the small layers):
            ``rand`` uniform [0, 1) normalised to sum 1; ``rand_softmax`` softmax of uniform [0, 1);
            ``stackbert`` one-hot at ``l % L1`` (stacking); ``interlace`` one-hot at ``l // 2`` (each small
            layer repeated; needs ``L2 <= 2 * L1``); ``lossless`` (ours, function-preserving): large layers are
            spread evenly over the small ones, the first of each group copies its small layer and the others are
            added blocks whose attention-output and FFN-output coefficients are zero, so a pre-norm block adds
            nothing to the residual stream (an identity). ``*_noisy``: the zero entries of the one-hot schemes are
            first drawn uniform [0, depth_noise), then the vector is renormalised; for ``rand`` and ``lossless``
            the suffix is accepted and changes nothing.
        width_init: initial width matrices E (shape (d_large - d_small, d_small)): ``rand`` rows uniform
            [0, 1) normalised to sum 1; ``rand_softmax`` row-wise softmax of uniform [0, 1); ``sel`` each row
            one-hot at a random column (new neurons copy old ones); ``sel_noisy`` uniform [0, width_noise)
            first, then the chosen entry set to 1 (no renormalisation); ``lossless`` (ours, function-preserving):
            new neuron r copies neuron ``r % d_small`` (whole heads copied as blocks), and every weight's input
            side is divided by its width's growth factor (in the depth coefficients; modules without them get a
            fixed scale, and a tied output head's factor is folded into the norm before it): with integer growth
            factors and unchanged head sizes the grown model computes the small model's function.
            ``lossless_noisy`` adds uniform (-width_noise, width_noise) / sqrt(d_small) to every entry, which
            breaks the tie between a neuron and its copies at a small cost in exactness.
        depth_noise: noise level of the ``*_noisy`` depth schemes (official default 0.03).
        width_noise: noise level of ``sel_noisy`` (official default 0.03).
        tie: share width matrices as the official code does (``fuse_tie_param``): one residual-stream
            matrix for embeddings, every block's input/output sides and norms, and the head input; per large
            layer one each for query, key, value and FFN widths; one for the head. False: every module owns
            its own input and output width matrices.
        residual: add a learned full-size tensor to every produced weight and bias (uniform
            (-residual_noise, residual_noise) at start).
        residual_noise: half-width of the residual tensors' uniform initialisation.
        train_depth: depth coefficients are trainable parameters (else fixed buffers).
        train_width: width matrices are trainable parameters (else fixed buffers).
        train_small: the small model's weights (copied, never shared) are trainable parameters too.
        seed: seed for the initial draws; None uses torch's global generator.
        lean: memory-lean expansion: each large layer's weights are produced just before that layer runs and
            dropped after it; backward recomputes them (like activation checkpointing, but for weights only),
            so about one layer's large weights are alive at a time. None (auto): on while gradients are
            recorded and the eager step would not fit in the free memory of the device (an estimate:
            ``LiGOModel.memory_plan``).
        linear_mode: how block linear layers run: ``materialize`` (produce W, then x @ W^T), ``factored``
            (``((x @ B_in) @ Wmix^T) @ B_out^T`` without producing W; identity blocks as slices), or ``auto``
            (a cost model picks per module kind from the shapes and the batch's token count).
    """

    depth_init: str = "stackbert_noisy"
    width_init: str = "rand"
    depth_noise: float = 0.03
    width_noise: float = 0.03
    tie: bool = True
    residual: bool = False
    residual_noise: float = 0.01
    train_depth: bool = True
    train_width: bool = True
    train_small: bool = False
    seed: int | None = None
    lean: bool | None = None
    linear_mode: str = "materialize"

    def __post_init__(self) -> None:
        if self.depth_init not in DEPTH_INITS:
            raise ValueError(f"unknown depth_init {self.depth_init!r}; valid schemes: {', '.join(DEPTH_INITS)}")
        if self.width_init not in WIDTH_INITS:
            raise ValueError(f"unknown width_init {self.width_init!r}; valid schemes: {', '.join(WIDTH_INITS)}")
        if self.linear_mode not in LINEAR_MODES:
            raise ValueError(f"unknown linear_mode {self.linear_mode!r}; valid: {', '.join(LINEAR_MODES)}")
        for name in ("depth_noise", "width_noise", "residual_noise"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v >= 0 and v == v and v != float("inf")):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")

    def replace(self, **overrides) -> LiGOConfig:
        """A copy with some fields changed (unknown names raise TypeError)."""
        fields = {f.name for f in dataclasses.fields(self)}
        bad = sorted(set(overrides) - fields)
        if bad:
            raise TypeError(f"unknown LiGOConfig option(s) {bad}; valid: {sorted(fields)}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LiGOConfig:
        """The inverse of :meth:`to_dict`; options that older versions saved and this one dropped are ignored."""
        return cls().replace(**{k: v for k, v in d.items() if k not in REMOVED_OPTIONS})
