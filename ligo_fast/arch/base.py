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
from dataclasses import dataclass, field, replace

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
            None: that side never grows (a vocabulary). A tuple of names: the output is several equal
            parts fused in one tensor (GPT-2's ``c_attn`` = query|key|value), each growing with its own width.
        inp: width name of the input side of a linear (columns). None: never grows.
        transposed: the weight is stored (in, out), like GPT-2's ``Conv1D``.
        weight: attribute name of the weight tensor (``cls_token`` for a bare parameter).
        bias: attribute name of the bias; used when the small model has it (Llama's ``attention_bias``...).
        offset: ``norm``: the model scales by ``offset + weight`` (Gemma's RMSNorm: ``1 + w``). The operator
            expands the effective scale ``offset + weight`` and stores it back minus ``offset``, so a grown norm
            computes what a plain norm of the same effective scale would: a copied feature gets its source's
            scale, and a mixing row that sums to 1 gives ``offset + E w``.
        output_scale: ``embedding``: the model multiplies the looked-up rows by ``output_scale(width)`` (Gemma:
            ``sqrt(hidden_size)``); function-preserving growth divides the table by the change of that factor.

    A linear weight of more than two dimensions (a Conv2d patch projection) grows on dim 0 only, viewed as
    (out, rest); an embedding-like tensor of more than two dimensions grows on its last dim, viewed as
    (rest, features).
    """

    path: str
    kind: str
    out: str | tuple[str, ...] | None
    inp: str | None = None
    transposed: bool = False
    weight: str = "weight"
    bias: str | None = "bias"
    offset: float = 0.0
    output_scale: Callable[[int], float] | None = None

    def key(self, what: str) -> str:
        return f"{self.path}.{what}" if self.path else what


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
        resolve: adapts the description to a pair of configs (GQA's own o_proj input width).
        pre_norm: blocks normalise their input (an added block with zeroed outputs is the identity); False for
            post-norm BERT/RoBERTa.
        rotary: attention applies rotary position embeddings (frequencies per head dimension).
        residual_writers: paths (in ``layer_modules``) of the modules whose output a block adds to the residual
            stream, where that is not a linear (sandwich norms: Gemma's ``post_*_layernorm`` normalise the
            attention and MLP outputs before the addition). Function-preserving depth growth zeroes these
            modules' depth rows for the layers it adds; empty: the block linears that output the residual width.
            Zeroing a post-norm's effective scale rather than the linear before it keeps an added block's output
            proportional to its parameters (a zeroed linear feeds an RMSNorm zeros, where its output jumps to full
            scale as soon as a step moves the linear past ``sqrt(eps)``).
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
    resolve: Callable | None = None
    pre_norm: bool = True
    rotary: bool = False
    residual_writers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        paths = {m.path for m in self.layer_modules}
        for p in self.residual_writers:
            if p not in paths:
                raise ValueError(f"{self.family}: residual writer {p!r} is not one of the block's modules")
        for m in self.layer_modules + self.modules:
            if m.kind not in (LINEAR, NORM, EMBEDDING):
                raise ValueError(f"{self.family}: module {m.path!r} has unknown kind {m.kind!r}")
            if (m.offset and m.kind != NORM) or (m.output_scale is not None and m.kind != EMBEDDING):
                raise ValueError(f"{self.family}: module {m.path!r}: offset is for norms, output_scale for embeddings")
            for w in _names(m.out) + _names(m.inp):
                if w not in self.widths:
                    raise ValueError(
                        f"{self.family}: module {m.path!r} uses width {w!r} but the description has no "
                        f"width of that name (declared: {', '.join(self.widths)})"
                    )

    def for_configs(self, small_config, large_config) -> Arch:
        """The description to use for this pair of configs (``resolve`` may adapt tying to e.g. GQA)."""
        if self.check_config is not None:
            self.check_config(small_config, large_config)
        return self.resolve(self, small_config, large_config) if self.resolve else self

    def base_model(self, prefix: str, classes: tuple[str, ...]) -> Arch:
        """The same family without its head: drop modules outside ``prefix`` and strip it from every path."""
        cut = prefix + "."

        def strip(p: str) -> str:
            return p[len(cut) :] if p.startswith(cut) else p

        mods = tuple(replace(m, path=strip(m.path)) for m in self.modules if m.path.startswith(cut))
        used = {w for m in self.layer_modules + mods for w in _names(m.out) + _names(m.inp)}
        widths = {k: replace(w, key=strip(w.key)) for k, w in self.widths.items() if k in used}
        return replace(self, classes=classes, layers=strip(self.layers), widths=widths, modules=mods)

    def layer_path(self, l: int) -> str:
        return f"{self.layers}.{l}"


def _names(w) -> tuple[str, ...]:
    if w is None:
        return ()
    return tuple(w) if isinstance(w, tuple) else (w,)


def check_heads(small, large) -> None:
    """Head counts must divide the width (unless head_dim is explicit) and KV heads divide heads."""
    for c, which in ((small, "small"), (large, "large")):
        heads = getattr(c, "num_attention_heads", None)
        if not heads:
            continue
        if getattr(c, "head_dim", None) is None and c.hidden_size % heads:
            raise ValueError(f"{which} config: num_attention_heads={heads} does not divide hidden_size={c.hidden_size}")
        kv = getattr(c, "num_key_value_heads", None)
        if kv and heads % kv:
            raise ValueError(f"{which} config: num_key_value_heads={kv} does not divide num_attention_heads={heads}")


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
    """The description for ``model``, or a ValueError listing the supported classes.

    Looked up by the class's name, then by its base classes' (a subclass of ``LlamaForCausalLM`` grows as one), then
    by ``config.model_type``: among the descriptions of that family, the one whose every module the model has (a
    custom class that is not derived from a HF one but has a supported family's layout and config).
    """
    for cls in type(model).__mro__:
        if cls.__name__ in _REGISTRY:
            return _REGISTRY[cls.__name__]
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    fits = [a for a in _by_model_type(model_type) if _has_modules(a, model)]
    if fits:
        return max(fits, key=lambda a: len(a.modules))  # the most complete fit: a model with a head over its base
    raise ValueError(
        f"{type(model).__name__} is not supported by ligo_fast; supported classes: {', '.join(supported_classes())} "
        f"(and their subclasses, or a model of a supported config.model_type with the family's module layout). "
        "Describe it with ligo_fast.arch.Arch and call ligo_fast.register_architecture."
    )


def _by_model_type(model_type: str | None) -> list[Arch]:
    archs = {id(a): a for a in _REGISTRY.values() if model_type in a.model_types}
    return list(archs.values())


def _has_modules(arch: Arch, model) -> bool:
    """Whether ``model`` has every tensor ``arch`` names (block modules in its first block)."""
    keys = set(model.state_dict())
    block = f"{arch.layer_path(0)}."
    return all(block + m.key(m.weight) in keys for m in arch.layer_modules) and all(
        m.key(m.weight) in keys for m in arch.modules
    )
