"""Initial values of the operator's coefficients: the init schemes, as one registry per kind.

A scheme is a function that draws a base matrix; its ``*_noisy`` variant is derived, not listed: a scheme that
declares a ``noise`` function gets it applied after the draw, the others ignore the suffix (the official code's
``rand_noisy`` equals ``rand``). Adding a scheme means adding one entry here; :mod:`ligo_fast.config` reads the
names from these registries.

Depth schemes draw ``(L2, L1)``: row l mixes the small layers into large layer l. ``block_output`` tells the
scheme that the module writes into the residual stream (attention output, FFN output): the function-preserving
scheme zeroes those rows for the layers it adds, which makes an added pre-norm block the identity.
Width schemes draw ``E`` of shape ``(large - small, small)``, the new rows of ``B = [I; E]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

Generator = torch.Generator | None


@dataclass(frozen=True)
class Scheme:
    """An init scheme: ``draw`` makes the base matrix; ``noise`` (if any) perturbs it for the ``_noisy`` variant.

    ``draw(rows, cols, generator, **context)``; ``noise(base, level, generator) -> perturbed``.
    """

    draw: Callable[..., Tensor]
    noise: Callable[[Tensor, float, Generator], Tensor] | None = None


def _uniform(shape, generator: Generator) -> Tensor:
    return torch.rand(shape, generator=generator, dtype=torch.float32)


def _normalised(rows: int, cols: int, generator: Generator, **_) -> Tensor:
    u = _uniform((rows, cols), generator)
    return u.div_(u.sum(-1, keepdim=True))  # in place: one (rows, cols) allocation, the same values


def _softmax(rows: int, cols: int, generator: Generator, **_) -> Tensor:
    return torch.softmax(_uniform((rows, cols), generator), -1)


def _one_hot(index: Tensor, cols: int) -> Tensor:
    m = torch.zeros(len(index), cols)
    m[torch.arange(len(index)), index] = 1.0
    return m


def _fill_zeros(base: Tensor, level: float, generator: Generator) -> Tensor:
    """The official ``*_noisy`` rule: zero entries drawn uniform [0, level), the one-hot entries stay 1."""
    w = _uniform(base.shape, generator) * level
    return torch.where(base == 1, base, w)


def _fill_zeros_renormalised(base: Tensor, level: float, generator: Generator) -> Tensor:
    w = _fill_zeros(base, level, generator)
    return w / w.sum(-1, keepdim=True)


# ------------------------------------------------------------------------------------------------ depth
def _stackbert(L2: int, L1: int, generator: Generator, **_) -> Tensor:
    return _one_hot(torch.arange(L2) % L1, L1)


def check_depth_reach(scheme: str, L1: int, L2: int) -> None:
    """ValueError when depth scheme ``scheme`` cannot grow ``L1`` layers to ``L2`` (``interlace``: at most 2 L1)."""
    if scheme.removesuffix(NOISY) == "interlace" and L2 > 2 * L1:
        raise ValueError(
            f"depth_init={scheme!r} repeats each of the {L1} small layers twice, so it can grow to at most "
            f"{2 * L1} layers, not {L2}; use 'stackbert' or 'rand'"
        )


def _interlace(L2: int, L1: int, generator: Generator, **_) -> Tensor:
    check_depth_reach("interlace", L1, L2)
    return _one_hot(torch.arange(L2) // 2, L1)


def lossless_layers(L2: int, L1: int) -> tuple[Tensor, Tensor]:
    """(source small layer, is-added) per large layer for function-preserving depth growth.

    Large layers are spread evenly: large layer l belongs to small layer ``l * L1 // L2``; the first large layer of
    each group is that small layer's copy, the others are added layers (identity in a pre-norm model).
    """
    src = torch.arange(L2) * L1 // L2
    added = torch.ones(L2, dtype=torch.bool)
    added[torch.searchsorted(src, torch.arange(L1))] = False
    return src, added


def grown_layer_types(small_types: Sequence[str], L2: int) -> list[str]:
    """Per-layer attention kinds (``config.layer_types``) for a model grown to ``L2`` layers: each large layer takes
    the kind of the small layer it is grown from (:func:`lossless_layers`), so copied layers keep theirs (exactness)
    and the ratio of sliding-window to full layers stays the small model's."""
    src, _ = lossless_layers(L2, len(small_types))
    return [small_types[j] for j in src.tolist()]


def _lossless_depth(L2: int, L1: int, generator: Generator, block_output: bool = False, **_) -> Tensor:
    src, added = lossless_layers(L2, L1)
    w = _one_hot(src, L1)
    if block_output:
        w[added] = 0.0  # an added block writes nothing into the residual stream
    return w


DEPTH_SCHEMES: dict[str, Scheme] = {
    "rand": Scheme(_normalised),
    "rand_softmax": Scheme(_softmax),
    "stackbert": Scheme(_stackbert, _fill_zeros_renormalised),
    "interlace": Scheme(_interlace, _fill_zeros_renormalised),
    "lossless": Scheme(_lossless_depth),
}


# ------------------------------------------------------------------------------------------------ width
def _sel(rows: int, cols: int, generator: Generator, **_) -> Tensor:
    return _one_hot(torch.randint(0, cols, (rows,), generator=generator), cols)


def _lossless_width(rows: int, cols: int, generator: Generator, **_) -> Tensor:
    # new neuron r copies old neuron r mod small: the large features are [h; h; ...], whole heads copied as blocks
    return _one_hot(torch.arange(rows) % cols, cols)


def _zero_mean(base: Tensor, level: float, generator: Generator) -> Tensor:
    # uniform (-level, level) / sqrt(small): a copy's input moves by about level/sqrt(3) of its typical size,
    # whatever the width; enough to break the tie between a neuron and its copies, small against the signal
    return base + (2 * _uniform(base.shape, generator) - 1) * (level / base.shape[-1] ** 0.5)


WIDTH_SCHEMES: dict[str, Scheme] = {
    "rand": Scheme(_normalised),
    "rand_softmax": Scheme(_softmax),
    "sel": Scheme(_sel, _fill_zeros),
    "lossless": Scheme(_lossless_width, _zero_mean),
}

NOISY = "_noisy"


def _names(registry: dict[str, Scheme]) -> tuple[str, ...]:
    return tuple(registry) + tuple(name + NOISY for name in registry)


def is_lossless(scheme: str) -> bool:
    """Whether ``scheme`` is a function-preserving scheme (not part of the official code)."""
    return scheme.removesuffix(NOISY) == "lossless"


DEPTH_INITS = _names(DEPTH_SCHEMES)
WIDTH_INITS = _names(WIDTH_SCHEMES)
OFFICIAL_DEPTH_INITS = tuple(s for s in DEPTH_INITS if not is_lossless(s))
OFFICIAL_WIDTH_INITS = tuple(s for s in WIDTH_INITS if not is_lossless(s))


def _draw(registry, kind: str, scheme: str, rows: int, cols: int, noise: float, generator, **context) -> Tensor:
    base_name = scheme.removesuffix(NOISY)
    if base_name not in registry:
        names = DEPTH_INITS if kind == "depth" else WIDTH_INITS
        raise ValueError(f"unknown {kind} init scheme {scheme!r}; valid schemes: {', '.join(names)}")
    s = registry[base_name]
    base = s.draw(rows, cols, generator, **context)
    return s.noise(base, noise, generator) if (scheme.endswith(NOISY) and s.noise is not None) else base


def depth_init(
    L2: int, L1: int, scheme: str, noise: float, generator: Generator = None, *, block_output: bool = False
) -> Tensor:
    """Depth coefficients for all large layers: (L2, L1), each row a mixing vector over the small layers."""
    return _draw(DEPTH_SCHEMES, "depth", scheme, L2, L1, noise, generator, block_output=block_output)


def width_init(n_new: int, small: int, scheme: str, noise: float, generator: Generator = None) -> Tensor:
    """A width matrix E of shape (n_new, small) = (d_large - d_small, d_small)."""
    return _draw(WIDTH_SCHEMES, "width", scheme, n_new, small, noise, generator)
