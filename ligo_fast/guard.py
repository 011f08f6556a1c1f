"""Guards of a growth run: the operator loss rising in its first steps, and a grown model worse than the small one.

One module, used by the command line (``ligo-fast grow``) and by ``GrowthCallback``:

* :class:`RiseGuard` watches the operator's first :data:`RISE_WINDOW` steps. The loss of step 1 is the start (it is
  computed before any update, so it is the loss of the initialisation); the guard answers one line, once (what
  happened and what to try), when the mean of the last :data:`RISE_MEAN` step losses exceeds the start by more than
  :data:`RISE_MARGIN` (relative) and the rise is not the batches' own spread: it exceeds :data:`RISE_Z` standard
  errors of a step loss's noise (estimated from the steps seen: the mean change from one step to the next, which a
  slow drift barely inflates), or :data:`RISE_CERTAIN` (a rise that size is never batch noise; a jump inflates the
  noise estimate).
  A function-preserving start with a continued-training learning rate should not rise; a rise in the first steps is
  the signature of a learning rate that destroys the pretrained function (or of an init that does not preserve it),
  and such a rise is several-fold. Each step's loss is one batch's: at a small batch the start is one window of
  text and windows differ by more than the margin, so a margin alone fires on noise (a false positive seen on the
  real Gemma at batch 1: ``benchmarks/results/real_model_check.md``, run G).
* :func:`worse_than_small` compares the grown model's evaluation loss with the small model's on the same text and
  answers one line when the grown one is worse by more than :data:`WORSE_MARGIN` (relative).

Pure: imports only the standard library.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field

RISE_MARGIN = 0.1
"""A rise of the operator loss above its start by more than this share fires :class:`RiseGuard`."""
RISE_WINDOW = 20
"""The first steps :class:`RiseGuard` watches (a rise later is training noise or a schedule's business)."""
RISE_MEAN = 3
"""Step losses averaged before comparing with the start."""
RISE_Z = 3.0
"""A rise must exceed this many standard errors of the step losses' noise (a rise of 3 s.e. is noise about once
in 700 one-sided tests; the guard makes up to :data:`RISE_WINDOW` of them)."""
RISE_CERTAIN = 0.5
"""A rise above the start by more than this share fires whatever the estimated noise (a destroyed pretrained model
rises several-fold; an erratic loss would inflate the noise estimate)."""
WORSE_MARGIN = 0.01
"""A grown model whose evaluation loss exceeds the small model's by more than this share is reported worse."""


def _try(lr: float | None = None) -> str:
    lower = f" (e.g. {lr / 10:.3g})" if lr is not None else " (ligo_fast.budget.operator_lr's continued-training lr)"
    return (
        f"try a lower operator learning rate{lower} and a function-preserving init (grow()'s defaults: "
        "depth_init='lossless', width_init='lossless': exactly the small model's function)"
    )


@dataclass
class RiseGuard:
    """Watches the operator loss of the first steps (see the module doc); :meth:`update` per step.

    Attributes:
        margin, window, mean, z, certain: :data:`RISE_MARGIN`, :data:`RISE_WINDOW`, :data:`RISE_MEAN`,
            :data:`RISE_Z`, :data:`RISE_CERTAIN` unless given.
        lr: the operator's peak learning rate, named in the message (None: not named).
        start: the loss of the first step seen (None before it); ``fired``: whether the guard has spoken.
    """

    margin: float = RISE_MARGIN
    window: int = RISE_WINDOW
    mean: int = RISE_MEAN
    z: float = RISE_Z
    certain: float = RISE_CERTAIN
    lr: float | None = None
    start: float | None = None
    fired: bool = False
    _recent: deque = field(default_factory=deque, repr=False)
    _changes: list = field(default_factory=list, repr=False)  # |loss - previous step's loss|

    def update(self, step: int, loss: float) -> str | None:
        """Record the loss of operator step ``step`` (1-based); one line the first time the loss has risen."""
        if self.fired or not math.isfinite(loss):
            return None
        if self.start is None:
            self.start = loss
            return None
        if step > self.window:
            return None
        self._changes.append(abs(loss - (self._recent[-1] if self._recent else self.start)))
        self._recent.append(loss)
        if len(self._recent) > self.mean:
            self._recent.popleft()
        now = sum(self._recent) / len(self._recent)
        if len(self._recent) < min(self.mean, self.window - 1) or now <= self.start * (1 + self.margin):
            return None
        if now <= self.start * (1 + self.certain) and now - self.start <= self.z * self._standard_error():
            return None
        self.fired = True
        at = f" at lr {self.lr:.3g}" if self.lr is not None else ""
        return (
            f"the operator loss rose from {self.start:.4g} to {now:.4g} (mean of the last {len(self._recent)} steps) "
            f"in its first {step} steps{at}: the growth is destroying the small model's function; {_try(self.lr)}"
        )

    def _standard_error(self) -> float:
        """The standard error of (the mean of the last steps - the start) from the step-to-step changes seen: for
        independent step losses of spread sigma a change has mean 2 sigma / sqrt(pi) (a half-normal of scale
        sqrt(2) sigma)."""
        sigma = statistics.fmean(self._changes) * math.sqrt(math.pi) / 2
        return sigma * math.sqrt(1 + 1 / len(self._recent))


def worse_than_small(small_loss: float, grown_loss: float, margin: float = WORSE_MARGIN) -> str | None:
    """One line when ``grown_loss`` (the grown model's evaluation loss) exceeds ``small_loss`` (the small model's,
    on the same text) by more than ``margin`` (relative) or is not finite; None when the growth did no harm."""
    if math.isfinite(grown_loss) and grown_loss <= small_loss * (1 + margin):
        return None
    return (
        f"the grown model is worse than the small model on the evaluation text (loss {grown_loss:.4g} against "
        f"{small_loss:.4g}); {_try()}"
    )
