"""The official checkpoint layout: translating the operator's internal tensors to official keys and back.

Internally the operator is layer-major (what the kernels want): small block weights ``(L1, out, in)``, per-layer
coefficients ``(L2, ...)``. The official code's state dict stacks small block tensors along a new last axis
(``__sm_attention_self_query_weight``: ``(out, in, L1)``) and keeps one key per large layer for per-layer
tensors (``bert.encoder.layer.3.attention.self.query.fuse_depth_coeffs.coeffs_weight``). The rules are the plan's
``(internal name, official key, rule)`` triples (:attr:`ligo_fast.plan.Plan.rules`).

Used by :class:`ligo_fast.model.LiGOModel`'s state-dict hooks, by :mod:`ligo_fast.compat` (which reads its
modules' tensors through :func:`from_official` to produce in one batch) and by :mod:`ligo_fast.distributed`.
Imports: torch, and ``plan`` for :class:`ligo_fast.plan.Rule`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from .plan import Rule

Rules = Iterable[tuple[str, str, Rule]]


def official_views(rules: Rules, tensors: Mapping[str, Tensor], own: bool = False) -> dict[str, Tensor]:
    """Official ``{key: tensor}`` of the internal ``tensors``: views (a stacked tensor's is not contiguous, a
    per-layer tensor's rows share its storage), or with ``own`` tensors of their own (copies where a view would
    be: savers that drop tensors sharing a storage, such as accelerate's, would lose rows). FSDP2 DTensors along a
    layer axis are gathered: a collective, so every rank must call it."""
    out: dict[str, Tensor] = {}
    for internal, official, rule in rules:
        v = tensors[internal]
        if rule != Rule.PLAIN and hasattr(v, "full_tensor"):  # FSDP2-sharded along the layer axis
            v = v.full_tensor()
        if rule == Rule.PLAIN:
            out[official] = v
        elif rule == Rule.STACK:
            out[official] = v.movedim(0, -1).contiguous() if own else v.movedim(0, -1)
        else:
            for l, row in enumerate(v.unbind(0)):
                out[official.format(l=l)] = row.clone() if own else row
    return out


def to_official(rules: Rules, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Official ``{key: tensor}`` of the internal ``tensors``, each with storage of its own (:func:`official_views`)."""
    return official_views(rules, tensors, own=True)


def keys_of(official: str, rule: Rule, L2: int) -> list[str]:
    """The official key(s) of one operator tensor: one per large layer for ``split``."""
    return [official.format(l=l) for l in range(L2)] if rule == Rule.SPLIT else [official]


def from_official(rules: Rules, sd: Mapping[str, Tensor], L2: int) -> dict[str, Tensor]:
    """Internal ``{name: tensor}`` of the operator tensors whose official keys are all in ``sd`` (others left out).

    Differentiable (views and ``torch.stack``), so it also serves to read live parameters.
    """
    out: dict[str, Tensor] = {}
    for internal, official, rule in rules:
        keys = keys_of(official, rule, L2)
        if not all(k in sd for k in keys):
            continue
        if rule == Rule.SPLIT:
            out[internal] = torch.stack([sd[k] for k in keys])
        else:
            out[internal] = sd[official].movedim(-1, 0) if rule == Rule.STACK else sd[official]
    return out


def check_state_fits(expected: Mapping[str, tuple[int, ...]], state_dict: Mapping[str, Tensor], strict: bool) -> None:
    """Name the first key or shape of ``state_dict`` that does not fit ``expected`` (before torch's long error)."""
    if strict:
        for k in expected:
            if k not in state_dict:
                raise ValueError(f"checkpoint does not fit: missing key {k!r} (shape {expected[k]})")
        for k in state_dict:
            if k not in expected:
                raise ValueError(f"checkpoint does not fit: unexpected key {k!r}")
    for k, v in state_dict.items():
        if k in expected and tuple(v.shape) != expected[k]:
            raise ValueError(f"checkpoint does not fit: {k!r} has shape {tuple(v.shape)}, expected {expected[k]}")
