"""Initial values of the operator's coefficients (the official schemes, see LiGOConfig)."""

from __future__ import annotations

import torch
from torch import Tensor

from .config import DEPTH_INITS, WIDTH_INITS


def _uniform(shape, generator) -> Tensor:
    return torch.rand(shape, generator=generator, dtype=torch.float32)


def depth_init(L2: int, L1: int, scheme: str, noise: float, generator: torch.Generator | None = None) -> Tensor:
    """Depth coefficients for all large layers: (L2, L1), each row a mixing vector over the small layers."""
    if scheme not in DEPTH_INITS:
        raise ValueError(f"unknown depth init scheme {scheme!r}; valid schemes: {', '.join(DEPTH_INITS)}")
    base = scheme.removesuffix("_noisy")
    noisy = scheme.endswith("_noisy")
    if base in ("rand", "rand_softmax"):
        u = _uniform((L2, L1), generator)
        return torch.softmax(u, -1) if base == "rand_softmax" else u / u.sum(-1, keepdim=True)
    if base == "interlace" and L2 > 2 * L1:
        raise ValueError(
            f"depth_init={scheme!r} repeats each of the {L1} small layers twice, so it can grow to at most "
            f"{2 * L1} layers, not {L2}; use 'stackbert' or 'rand'"
        )
    idx = torch.arange(L2) % L1 if base == "stackbert" else torch.arange(L2) // 2
    w = _uniform((L2, L1), generator) * noise if noisy else torch.zeros(L2, L1)
    w[torch.arange(L2), idx] = 1.0
    return w / w.sum(-1, keepdim=True)


def width_init(n_new: int, small: int, scheme: str, noise: float, generator: torch.Generator | None = None) -> Tensor:
    """A width matrix E of shape (n_new, small) = (d_large - d_small, d_small)."""
    if scheme not in WIDTH_INITS:
        raise ValueError(f"unknown width init scheme {scheme!r}; valid schemes: {', '.join(WIDTH_INITS)}")
    base = scheme.removesuffix("_noisy")
    if base in ("rand", "rand_softmax"):
        u = _uniform((n_new, small), generator)
        return torch.softmax(u, -1) if base == "rand_softmax" else u / u.sum(-1, keepdim=True)
    sel = torch.randint(0, small, (n_new,), generator=generator)
    E = _uniform((n_new, small), generator) * noise if scheme.endswith("_noisy") else torch.zeros(n_new, small)
    E[torch.arange(n_new), sel] = 1.0
    return E
