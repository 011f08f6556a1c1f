"""Architecture descriptions: which modules a model has, and which width matrix each side uses.

An :class:`Arch` is data, one per architecture family (see ``bert.py``). The operator code reads it and
never names a module itself. Users describe their own architecture with the same classes and call
:func:`ligo_fast.register_architecture`.

Vocabulary:
  * a *width* is a named axis that grows (``emb`` = the residual stream, ``query``, ``ffn``, ...); modules
    whose sides share a width name share one width matrix E when ``tie=True``;
  * a *layer module* exists once per transformer block and gets depth mixing; a *global module*
    (embeddings, heads) exists once and gets width expansion only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

LINEAR, NORM, EMBEDDING = "linear", "norm", "embedding"


@dataclass(frozen=True)
class Width:
    """A growing axis.

    Attributes:
        key: official checkpoint key of its tied width matrix (``{l}`` = large layer index for per-layer widths),
            without the ``.coeffs_weight`` suffix.
        per_layer: one matrix per large layer (query/key/value/ffn) or one shared matrix.
    """

    key: str
    per_layer: bool = False


@dataclass(frozen=True)
class Module:
    """One module whose parameters the operator produces.

    Attributes:
        path: attribute path; for layer modules relative to the block (``attention.self.query``), else from the
            model root (``bert.embeddings.word_embeddings``).
        kind: ``linear`` (weight (out, in) [+ bias (out,)]), ``norm`` (weight (d,) [+ bias (d,)]), or
            ``embedding`` (weight (num, d): only the columns grow).
        out: width name of the output side (rows of a linear weight, the features of a norm or embedding).
            None: that side never grows (a vocabulary).
        inp: width name of the input side of a linear (columns). None: never grows.
        bias: whether the module has a bias tensor (``bias`` attribute).
        transposed: the weight is stored (in, out), like GPT-2's ``Conv1D``.
    """

    path: str
    kind: str
    out: str | None
    inp: str | None = None
    bias: bool = True
    transposed: bool = False


@dataclass(frozen=True)
class Arch:
    """Everything the operator needs to know about one architecture family.

    Attributes:
        family: family name (errors and docs).
        model_types: HF ``config.model_type`` values of this family.
        classes: HF class names this description fits.
        layers: path of the block list (``bert.encoder.layer``).
        widths: the growing axes by name.
        layer_modules: modules inside each block (paths relative to the block).
        modules: modules outside the blocks (paths from the root).
        num_layers: reads the layer count from a config.
        check_config: raises ValueError when a (small, large) pair of configs cannot be grown (head counts...).
    """

    family: str
    model_types: tuple[str, ...]
    classes: tuple[str, ...]
    layers: str
    widths: dict[str, Width]
    layer_modules: tuple[Module, ...]
    modules: tuple[Module, ...]
    num_layers: Callable = field(default=lambda c: c.num_hidden_layers)
    check_config: Callable | None = None

    def layer_path(self, l: int) -> str:
        return f"{self.layers}.{l}"


_REGISTRY: dict[str, Arch] = {}


def register_architecture(arch: Arch, *, overwrite: bool = False) -> None:
    """Make ``grow`` accept models of the HF classes named in ``arch.classes``."""
    for cls in arch.classes:
        if cls in _REGISTRY and not overwrite:
            raise ValueError(f"{cls} is already registered (family {_REGISTRY[cls].family}); pass overwrite=True")
    for cls in arch.classes:
        _REGISTRY[cls] = arch


def supported_classes() -> list[str]:
    return sorted(_REGISTRY)


def arch_for(model) -> Arch:
    """The description for ``model``'s class, or a ValueError listing the supported classes."""
    name = type(model).__name__
    if name not in _REGISTRY:
        raise ValueError(
            f"{name} is not supported by ligo_fast; supported classes: {', '.join(supported_classes())}. "
            "Describe it with ligo_fast.arch.Arch and call ligo_fast.register_architecture."
        )
    return _REGISTRY[name]
