"""Memory-lean expansion: produce each large layer's weights just before it runs, recompute them in backward.

The eager path produces every large weight before the forward and autograd keeps them all until backward:
the operator step then needs the large model's weights *plus* what training them would. Here:

* the weights of block l are produced by a forward pre-hook on block l (one expand call per module kind for
  that layer), set on its modules, and removed by a forward post-hook;
* the production runs under non-reentrant activation checkpointing, so its autograd graph keeps only the
  operator's own tensors, never the produced weights or intermediates;
* while the model runs, a saved-tensors hook replaces every tensor that autograd would keep and that lives in
  a produced weight's storage (``weight``, ``weight.t()``, ...) by a small marker; backward unpacks a marker by
  producing that layer again (cached while backward is inside that layer) and viewing the same strides.

So about one layer's large weights are alive at a time, in forward and in backward, and the numbers are those
of the eager path: the same production code computes the same values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class _Marker:
    layer: int
    name: str
    size: torch.Size
    stride: tuple[int, ...]
    offset: int


def _set(root: nn.Module, name: str, t: Tensor) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent), leaf, t)


def _unset(root: nn.Module, name: str) -> None:
    parent, _, leaf = name.rpartition(".")
    mod = root.get_submodule(parent)
    if leaf in mod.__dict__:
        delattr(mod, leaf)


def _storage_key(t: Tensor) -> int | None:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensors without a plain storage (fake, sparse, ...)
        return None


@contextmanager
def lean_layers(large: nn.Module, blocks: Sequence[nn.Module], produce: Callable[[int], dict[str, Tensor]]):
    """Run ``large`` with its blocks' weights produced per layer; the caller supplies the global weights.

    Args:
        large: the large HF model whose block parameters were removed.
        blocks: its transformer blocks, in order (block l's forward pre-hook produces layer l).
        produce: ``produce(l)`` -> ``{parameter name in large: tensor}`` of large layer l.
    """
    live: dict[int, tuple[int, str]] = {}  # storage pointer -> (layer, name), only while a block runs
    names: dict[int, list[str]] = {}
    cache: dict[str, object] = {"layer": None, "weights": None}

    def pre_hook(l: int):
        def hook(module, args):
            ws = checkpoint(produce, l, use_reentrant=False) if torch.is_grad_enabled() else produce(l)
            names[l] = list(ws)
            for name, t in ws.items():
                key = _storage_key(t)
                if key is not None:
                    live[key] = (l, name)
                _set(large, name, t)

        return hook

    def post_hook(l: int):
        def hook(module, args, output):
            for name in names.pop(l, []):
                _unset(large, name)
            for key in [k for k, v in live.items() if v[0] == l]:
                del live[key]

        return hook

    def pack(t: Tensor):
        hit = live.get(_storage_key(t)) if live else None
        if hit is None:
            return t
        return _Marker(hit[0], hit[1], t.size(), t.stride(), t.storage_offset())

    def unpack(x):
        if not isinstance(x, _Marker):
            return x
        if cache["layer"] != x.layer:
            cache["weights"] = None  # drop the previous layer's before producing this one
            with torch.no_grad():
                cache["weights"] = produce(x.layer)
            cache["layer"] = x.layer
        return cache["weights"][x.name].as_strided(x.size, x.stride, x.offset)

    handles = []
    for l, block in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(pre_hook(l)))
        handles.append(block.register_forward_hook(post_hook(l)))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield
    finally:
        for h in handles:
            h.remove()
        for l in list(names):
            for name in names.pop(l):
                _unset(large, name)
        live.clear()
