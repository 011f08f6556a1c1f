"""The one route by which produced weights and factored forwards reach a model's modules.

A :class:`Binding` installs values as attributes of modules (a produced ``weight`` on a module whose parameter the
operator replaces, a ``forward`` that runs a factored linear) and removes them again, restoring what was there; each
module records what is bound on it (:func:`installed`), which is how HF's activation checkpointing re-installs a
block's weights for its recompute (:mod:`ligo_fast.hf_surface`). In the spirit of accelerate's module hooks: the
model's modules are never rebuilt, only given for the duration of a call what they need.

Imports: torch only.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

BOUND = "_ligo_bound"  # in a module's __dict__ while something is bound on it: {attribute: value}
_ABSENT = object()


class Binding:
    """Values installed on modules, removed by :meth:`remove` or all at once when the binding closes (a context)."""

    def __init__(self) -> None:
        self._held: dict[tuple[int, str], list[tuple[nn.Module, object]]] = {}  # (module, leaf) -> [(module, prior)]
        self._order: list[tuple[nn.Module, str]] = []  # every install, in order

    def install(self, module: nn.Module, leaf: str, value: object) -> None:
        """Set ``module.<leaf> = value`` (over whatever it holds now, restored by :meth:`remove`)."""
        prior = module.__dict__.get(leaf, _ABSENT)
        setattr(module, leaf, value)
        module.__dict__.setdefault(BOUND, {})[leaf] = value
        self._held.setdefault((id(module), leaf), []).append((module, prior))
        self._order.append((module, leaf))

    def remove(self, module: nn.Module, leaf: str) -> None:
        """Undo the latest :meth:`install` of ``leaf`` on ``module`` by this binding (nothing if there is none)."""
        stack = self._held.get((id(module), leaf))
        if not stack:
            return
        _, prior = stack.pop()
        if not stack:
            del self._held[(id(module), leaf)]
        bound = module.__dict__.get(BOUND, {})
        if prior is _ABSENT:
            if leaf in module.__dict__ or leaf in module._parameters:  # a Parameter is registered as one
                delattr(module, leaf)
            bound.pop(leaf, None)
        else:
            setattr(module, leaf, prior)
            bound[leaf] = prior
        if not bound:
            module.__dict__.pop(BOUND, None)

    def install_named(self, root: nn.Module, tensors: Mapping[str, object]) -> None:
        """Install each value of ``tensors`` under its dotted name relative to ``root`` (``"layers.0.fc.weight"``)."""
        for name, t in tensors.items():
            parent, _, leaf = name.rpartition(".")
            self.install(root.get_submodule(parent), leaf, t)

    def remove_named(self, root: nn.Module, names) -> None:
        for name in names:
            parent, _, leaf = name.rpartition(".")
            self.remove(root.get_submodule(parent), leaf)

    def close(self) -> None:
        """Remove everything still installed, the latest first."""
        while self._order:
            self.remove(*self._order.pop())  # a no-op for what was removed already

    def __enter__(self) -> Binding:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def installed(root: nn.Module) -> list[tuple[nn.Module, str, object]]:
    """``(module, attribute, value)`` of everything bound on ``root``'s modules right now."""
    return [(m, leaf, v) for m in root.modules() for leaf, v in m.__dict__.get(BOUND, {}).items()]
