"""Per-layer operator tensors held one parameter per large layer, read when their layer runs.

By default every per-layer operator tensor (rule ``split``: the per-layer width matrices, ``(L2, ...)``) is one
parameter of ``LiGOModel.op``, and the forward reads all its rows when it binds. For FSDP2 units per block of large
layers (:func:`ligo_fast.distributed.shard` with ``per_block=True``) the rows of a chunk of layers must be
parameters of a module of that chunk's unit, and a reader must take a row when its layer runs (FSDP2 swaps the
registered parameter objects between sharded and gathered), not when the forward binds:

* :class:`LayerRows`: the module holding some large layers' rows (``<name>_L<layer>``), one per chunk of layers;
  its ``forward`` does nothing but lets FSDP2's hooks on it run;
* :class:`LayerRow`: a deferred row (the holder and the attribute), and :func:`resolve`, which readers
  (:func:`ligo_fast.factored.layer_factors`' factored linears, :func:`ligo_fast.produce.chunk_producer`) apply at
  call time;
* :data:`RowGetter`: ``rows(name)`` -> the deferred rows of a tensor held per layer, or None (then the reader
  unbinds ``get(name)`` as before).

Imports: torch only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn


def row_attr(name: str, layer: int) -> str:
    """The attribute of large layer ``layer``'s row of operator tensor ``name`` on its :class:`LayerRows`."""
    return f"{name}_L{layer}"


class LayerRows(nn.Module):
    """The rows of some large layers of the per-layer operator tensors, as parameters ``<name>_L<layer>``.

    ``forward()`` returns nothing: calling it runs the hooks FSDP2 registers on the module (gather before, and, once
    every module of its unit has run, reshard after)."""

    def __init__(self, layers: range) -> None:
        super().__init__()
        self.layers = layers

    def forward(self) -> None:
        return None

    def extra_repr(self) -> str:
        return f"layers {self.layers.start}-{self.layers.stop - 1}"


class LayerRow:
    """One large layer's row of a per-layer operator tensor held in a :class:`LayerRows`, read when called."""

    __slots__ = ("holder", "attr")

    def __init__(self, holder: LayerRows, attr: str) -> None:
        self.holder, self.attr = holder, attr

    def __call__(self) -> Tensor:
        return getattr(self.holder, self.attr)


def resolve(x):
    """``x()`` for a :class:`LayerRow`, else ``x`` itself (a tensor or None)."""
    return x() if isinstance(x, LayerRow) else x


RowGetter = Callable[[str | None], Sequence[LayerRow] | None]
