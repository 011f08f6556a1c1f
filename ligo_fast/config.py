"""Options of the LiGO growth operator (:class:`LiGOConfig`: its structure, saved with it), how a forward runs
(:class:`ExecutionOptions`: runtime policy, never saved), checks of the Hugging Face configs it grows between
(:func:`unknown_config_keys`, :func:`check_model_config`), and the large config built from a small one
(:func:`large_config`).

Imports: ``init`` (the scheme names), the standard library, and from transformers only the names it knows (its
activation functions, its rope parameters) to check configs against; HF configs themselves are duck-typed.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import logging
import math
import numbers
from dataclasses import dataclass

from transformers.activations import ACT2FN

from .init import DEPTH_INITS, WIDTH_INITS, grown_layer_types

try:
    from transformers.modeling_rope_utils import RopeParameters

    ROPE_KEYS: frozenset[str] | None = frozenset(RopeParameters.__annotations__)
except ImportError:  # a transformers without the typed rope parameters: their keys are not checked
    ROPE_KEYS = None

LINEAR_MODES = ("materialize", "factored", "auto")
GROW_INITS = {"depth_init": "lossless", "width_init": "lossless"}
"""The default inits (``LiGOConfig()``, ``grow()`` without a config): exactly the small model's function. No
symmetry-breaking noise: the identity block of ``B = [I; E]`` is fixed, so the first operator step moves a copy (its
rows of ``E``) and not its original, and the copies part in a loss-decreasing direction (noise cost +11.5% loss on a
real Gemma 3 270M: ``benchmarks/results/real_model_check.md``). A growth materialised without operator steps needs
``lossless_noisy``."""
OFFICIAL_INITS = {"depth_init": "stackbert_noisy", "width_init": "rand"}
"""The official code's default inits (:meth:`LiGOConfig.official`; the official API, :mod:`ligo_fast.compat`, uses
them): they do not preserve the small model's function (``benchmarks/results/defaults_rationale.md``)."""
REMOVED_OPTIONS = frozenset({"lean_min_mb"})  # saved by older versions; memory-lean mode now decides from memory


@dataclass(frozen=True)
class ExecutionOptions:
    """How a grown model's forward runs: runtime policy, not the operator's structure (not saved with it).

    The input of :func:`ligo_fast.execution.plan_execution` together with the batch shape, the device and the memory
    budget. ``LiGOConfig(lean=..., linear_mode=..., memory_budget=...)`` still accepts these options (its
    :attr:`LiGOConfig.execution` holds them). Attributes: ``lean``, ``linear_mode``, ``memory_budget`` as documented
    on :class:`LiGOConfig`; ``backend``: the ops' backend (``auto``: :mod:`ligo_fast.backends` chooses, the
    environment variable ``LIGO_FAST_BACKEND`` overrides).
    """

    lean: bool | None = None
    linear_mode: str = "auto"
    memory_budget: int | None = None
    backend: str = "auto"

    def __post_init__(self) -> None:
        for name in ("lean", "linear_mode", "memory_budget"):
            _check_field(name, getattr(self, name))
        if self.linear_mode not in LINEAR_MODES:
            raise ValueError(f"unknown linear_mode {self.linear_mode!r}; valid: {', '.join(LINEAR_MODES)}")
        if not isinstance(self.backend, str):
            raise ValueError(f"ExecutionOptions.backend must be a backend name (a string), got {self.backend!r}")


EXECUTION_FIELDS = tuple(f.name for f in dataclasses.fields(ExecutionOptions) if f.name != "backend")
"""The fields of :class:`LiGOConfig` that are execution options (accepted for compatibility, never saved)."""


@dataclass
class LiGOConfig:
    """How the growth operator is initialised and what it trains.

    ``LiGOConfig()`` (and ``ligo_fast.grow`` without a config) starts from the small model's function
    (:data:`GROW_INITS`: ``lossless`` depth and width), the start a pretrained small model needs;
    :meth:`official` holds the official code's defaults (``stackbert_noisy`` depth, ``rand`` width), which the
    official API, :mod:`ligo_fast.compat`, uses. A config passed to ``grow`` is used as given.

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
            so about one layer's large weights are alive at a time; a linear that runs factored forms its layer's
            depth mix when it runs and again in backward. None (auto): on while gradients are
            recorded and the eager step would not fit in the free memory of the device (an estimate:
            ``LiGOModel.memory_plan``).
        memory_budget: bytes of memory the operator step may plan with (the auto memory-lean choice, its chunk
            size and the refusal of a growth that cannot fit compare against 90% of it). None: the environment
            variable ``LIGO_FAST_MEMORY_BUDGET`` (e.g. ``16GiB``), else the memory free when the model is built
            (``MemAvailable`` and the cgroup limit on CPU). Read once per model and device, never again, so a run
            decides the same way however busy the machine gets (``LiGOModel.memory_budget`` holds the number).
        linear_mode: how linear layers and embedding tables run: ``materialize`` (produce W, then x @ W^T),
            ``factored`` (``((x @ B_in) @ Wmix^T) @ B_out^T`` without producing W, identity blocks as slices; an
            embedding widens only the looked-up rows, a tied LM head uses the small table), or ``auto``, the
            default (a cost model, :mod:`ligo_fast.factored`, picks per module kind from the shapes, the batch's
            token count and the device: factored where it needs fewer FLOPs/bytes, as for short batches, whose
            weight production costs more than the layer itself). Under ``torch.compile`` every mode materialises.

    ``lean``, ``memory_budget`` and ``linear_mode`` are execution options, not structure: :attr:`execution` holds
    them as an :class:`ExecutionOptions`, and :meth:`to_dict` (what ``ligo_config.json`` records) leaves them out;
    files that older versions wrote with them still load (they become this config's execution options).
    """

    depth_init: str = GROW_INITS["depth_init"]
    width_init: str = GROW_INITS["width_init"]
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
    linear_mode: str = "auto"
    memory_budget: int | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_field(f.name, getattr(self, f.name))
        if self.depth_init not in DEPTH_INITS:
            raise ValueError(f"unknown depth_init {self.depth_init!r}; valid schemes: {', '.join(DEPTH_INITS)}")
        if self.width_init not in WIDTH_INITS:
            raise ValueError(f"unknown width_init {self.width_init!r}; valid schemes: {', '.join(WIDTH_INITS)}")
        self.execution  # noqa: B018 - the execution options' own checks

    @property
    def execution(self) -> ExecutionOptions:
        """This config's execution options (``lean``, ``linear_mode``, ``memory_budget``)."""
        return ExecutionOptions(**{name: getattr(self, name) for name in EXECUTION_FIELDS})

    @classmethod
    def grow_defaults(cls, **overrides) -> LiGOConfig:
        """The config of ``ligo_fast.grow`` without one (the dataclass's defaults, :data:`GROW_INITS`), some
        fields replaced: ``LiGOConfig(**overrides)``, kept by name for older callers."""
        return cls(**overrides)

    @classmethod
    def official(cls, **overrides) -> LiGOConfig:
        """The official code's defaults (:data:`OFFICIAL_INITS`: ``stackbert_noisy`` depth, ``rand`` width; the
        other fields as the dataclass's), some replaced: what :mod:`ligo_fast.compat` uses."""
        return cls(**{**OFFICIAL_INITS, **overrides})

    def replace(self, **overrides) -> LiGOConfig:
        """A copy with some fields changed (unknown names raise TypeError)."""
        fields = {f.name for f in dataclasses.fields(self)}
        bad = sorted(set(overrides) - fields)
        if bad:
            raise TypeError(f"unknown LiGOConfig option(s) {bad}; valid: {sorted(fields)}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict:
        """The operator's structure (what ``ligo_config.json`` records): every field but the execution options
        (:data:`EXECUTION_FIELDS`), so that older versions, which know every key written, read it too."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in EXECUTION_FIELDS}

    @classmethod
    def from_dict(cls, d: dict) -> LiGOConfig:
        """The config of a dict (``to_dict``'s, or JSON read from a file): unknown keys (the closest valid name is
        suggested), wrong types (``"false"`` for a bool, ``"1"`` for a number) and bad values raise ``ValueError``.
        Options that older versions saved and this one dropped (:data:`REMOVED_OPTIONS`) are ignored."""
        if not isinstance(d, dict):
            raise ValueError(f"LiGOConfig: expected a dict of options, got {type(d).__name__}")
        d = {k: v for k, v in d.items() if k not in REMOVED_OPTIONS}
        fields = [f.name for f in dataclasses.fields(cls)]
        for k in d:
            if k not in fields:
                near = difflib.get_close_matches(str(k), fields, n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else f"; valid: {', '.join(fields)}"
                raise ValueError(f"unknown LiGOConfig option {k!r}{hint}")
        return cls(**d)


_BOOLS = ("tie", "residual", "train_depth", "train_width", "train_small")
_NUMBERS = ("depth_noise", "width_noise", "residual_noise")
_NAMES = ("depth_init", "width_init", "linear_mode")


def _check_field(name: str, v) -> None:
    """ValueError when ``v`` has the wrong type or range for LiGOConfig field ``name`` (strings are never read as
    booleans or numbers)."""
    if name in _BOOLS and not isinstance(v, bool):
        raise ValueError(f"LiGOConfig.{name} must be true or false, got {v!r}")
    if name == "lean" and not (v is None or isinstance(v, bool)):
        raise ValueError(f"LiGOConfig.lean must be true, false or None (auto), got {v!r}")
    if name in _NAMES and not isinstance(v, str):
        raise ValueError(f"LiGOConfig.{name} must be a scheme name (a string), got {v!r}")
    if name in _NUMBERS and not (
        isinstance(v, numbers.Real) and not isinstance(v, bool) and v >= 0 and v == v and v != float("inf")
    ):
        raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    if name == "memory_budget" and v is not None:
        if not isinstance(v, numbers.Integral) or isinstance(v, bool) or not 1 <= v <= 2**63:
            raise ValueError(f"LiGOConfig.memory_budget must be a number of bytes >= 1 or None (auto), got {v!r}")
    if name == "seed" and v is not None:
        if not isinstance(v, numbers.Integral) or isinstance(v, bool):
            raise ValueError(f"LiGOConfig.seed must be an integer or None, got {v!r}")
        if not -(2**63) <= v < 2**64:
            raise ValueError(f"LiGOConfig.seed must fit in 64 bits, got {v}")


# ---------------------------------------------------------------------------------------------- HF configs
SIZE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "n_embd",
    "intermediate_size",
    "n_inner",
    "num_hidden_layers",
    "n_layer",
    "num_attention_heads",
    "n_head",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "n_positions",
    "image_size",
    "patch_size",
    "num_channels",
)  # the sizes check_model_config requires to be positive integers (None: derived by the config class)
MAX_SIZE = 2**31 - 1  # no real model has a dimension near this; larger ones overflowed in torch (a C++ traceback)
ACTIVATION_FIELDS = ("hidden_act", "hidden_activation", "activation_function")  # names of ACT2FN functions
ROPE_FIELDS = ("rope_parameters", "rope_scaling")


def known_config_keys(config_class) -> set[str]:
    """The keys an HF config class knows: its dataclass fields / ``__init__`` names, what a default instance's
    ``to_dict()`` holds (the common ``PreTrainedConfig`` fields) and its ``attribute_map`` (aliases such as GPT-2's
    ``hidden_size`` for ``n_embd``)."""
    keys: set[str] = set()
    if dataclasses.is_dataclass(config_class):
        keys |= {f.name for f in dataclasses.fields(config_class)}
    for c in config_class.__mro__:
        init = c.__dict__.get("__init__")
        if init is not None:
            try:
                params = inspect.signature(init).parameters.values()
                keys |= {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)} - {"self"}
            except (TypeError, ValueError):
                pass
    try:
        keys |= set(config_class().to_dict())
    except Exception:  # noqa: BLE001 - a class without defaults: its fields and signature must do
        pass
    amap = getattr(config_class, "attribute_map", {}) or {}
    return keys | set(amap) | set(amap.values())


def unknown_config_keys(config) -> list[tuple[str, str | None]]:
    """``(key, closest known key or None)`` for each key of the HF config ``config`` (an instance, as built by
    ``ConfigClass(**d)``/``from_dict``, which keep unknown keys as attributes) that its class does not know: a
    misspelt ``"hiden_size"`` is kept silently by transformers and grows nothing; ``grow`` warns about these."""
    known = known_config_keys(type(config))
    given = config.to_dict() if hasattr(config, "to_dict") else dict(vars(config))
    out = []
    for k in sorted(given):
        if k not in known and not k.startswith("_"):
            near = difflib.get_close_matches(k, sorted(known), n=1, cutoff=0.75)
            out.append((k, near[0] if near else None))
    return out


def model_config_from_dict(config_class, d: dict):
    """``config_class.from_dict(d)`` (an HF config class), checked by :func:`check_model_config`; every problem is a
    one-line ``ValueError`` naming the field (transformers' strict configs raise their own error classes, whose
    message spans lines: their cause is used)."""
    if not isinstance(d, dict):
        raise ValueError(f"expected a JSON object of config fields, got {type(d).__name__}")
    try:
        config = config_class.from_dict(d)
    except Exception as e:  # noqa: BLE001 - strict dataclass errors, ValueError, TypeError, KeyError, ...
        cause = e.__cause__ if type(e).__name__.startswith("StrictDataclass") and e.__cause__ is not None else e
        text = " ".join(x.strip() for x in str(cause).splitlines() if x.strip()) or type(cause).__name__
        raise ValueError(text) from e
    check_model_config(config)
    return config


def check_model_config(config, what: str = "") -> None:
    """ValueError (one line, naming the field, after ``what: `` when given) when an HF config's size fields
    (:data:`SIZE_FIELDS`, those it has and sets) are not integers in ``1 .. MAX_SIZE``, a number is NaN or
    infinite (``rms_norm_eps: NaN`` would train to a NaN loss, read as divergence), an activation
    (:data:`ACTIVATION_FIELDS`) is not one transformers has, the rope parameters hold a key transformers does not
    know (a misspelt ``rope_thta`` is silently ignored by it; the closest name is suggested), or ``architectures``
    is not a list of class names."""
    pre = f"{what}: " if what else ""
    for name in SIZE_FIELDS:
        v = getattr(config, name, None)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise ValueError(f"{pre}{name} must be a positive integer, got {v!r}")
        if not 1 <= v <= MAX_SIZE:
            raise ValueError(f"{pre}{name} must be a positive integer of at most {MAX_SIZE}, got {v}")
    given = config.to_dict() if hasattr(config, "to_dict") else dict(vars(config))
    for name, v in given.items():
        for key, x in v.items() if isinstance(v, dict) else [(None, v)]:
            if isinstance(x, float) and not math.isfinite(x):
                where = name if key is None else f"{name}.{key}"
                raise ValueError(f"{pre}{where} must be a finite number, got {x}")
    for name in ACTIVATION_FIELDS:
        v = getattr(config, name, None)
        if isinstance(v, str) and v not in ACT2FN:
            raise ValueError(f"{pre}{name} {v!r} is not an activation transformers has{_closest(v, list(ACT2FN))}")
    for name in ROPE_FIELDS:
        _check_rope(getattr(config, name, None), f"{pre}{name}")
    arch = getattr(config, "architectures", None)
    if arch is not None and not (isinstance(arch, list) and all(isinstance(a, str) for a in arch)):
        raise ValueError(f"{pre}architectures must be a list of class names, got {arch!r}")


def _closest(name: str, valid: list[str]) -> str:
    near = difflib.get_close_matches(name, valid, n=1)
    return f" (did you mean {near[0]!r}?)" if near else f"; valid: {', '.join(sorted(valid))}"


def _check_rope(params, what: str) -> None:
    """Unknown keys of rope parameters (a dict, or a dict of them per attention type) are a ValueError."""
    if ROPE_KEYS is None or not isinstance(params, dict):
        return
    groups = params.items() if params and all(isinstance(v, dict) for v in params.values()) else [(None, params)]
    for group, d in groups:
        for k in d:
            if k not in ROPE_KEYS:
                where = what if group is None else f"{what}.{group}"
                raise ValueError(f"{where}: unknown key {k!r}{_closest(str(k), sorted(ROPE_KEYS))}")


# ---------------------------------------------------------------------------------------------- large configs
DROPPED_KEYS = frozenset({"quantization_config", "_name_or_path", "transformers_version"})
"""Keys of the small config a large one never inherits: the grown weights are produced in floating point (never
quantised, whatever the small checkpoint was), and the path and version describe the small checkpoint."""


def inherited_fields(small_config, given: dict) -> dict:
    """The small config's fields that ``given`` lacks, minus those the class derives or defaults by itself, minus
    :data:`DROPPED_KEYS` and the keys its class does not know (a checkpoint's ``unk_token_id`` for a class without
    it: it changes nothing, and grow() would warn about it).

    A field is dropped when building the config without it gives the same value (a default, or derived from other
    fields like ``head_dim = hidden_size // num_attention_heads``), so it is derived again from the large sizes.
    """
    base = small_config.to_dict()
    cls = type(small_config)
    known = known_config_keys(cls)
    keep = {}
    hf_logger = logging.getLogger("transformers")
    level = hf_logger.level
    hf_logger.setLevel(logging.ERROR)  # trial configs may warn about odd combinations
    try:
        for k, v in base.items():
            if k in given or k in DROPPED_KEYS or k not in known:
                continue
            try:
                same = getattr(cls.from_dict({kk: vv for kk, vv in base.items() if kk != k}), k, object()) == v
            except Exception:  # noqa: BLE001 - a config that needs this field keeps it
                same = False
            if not same:
                keep[k] = v
    finally:
        hf_logger.setLevel(level)
    return keep


def large_config(small_config, **changes):
    """The HF config of a large model grown from ``small_config``: its fields with ``changes`` applied, of the same
    class (checked by :func:`model_config_from_dict`).

    Fields the class derives (``head_dim`` of Llama-style configs, defaults) are derived again from the large sizes,
    except the head size, which follows this rule where the class has a ``head_dim`` field: given, as given; when
    ``num_attention_heads`` changes, the small model's head size is kept (more heads of the same size: the growth
    that can preserve the function exactly); else ``hidden_size // num_attention_heads``. When the head count
    changes and ``num_key_value_heads`` is not given, the group size (query heads per key/value head) is kept. A
    per-layer ``layer_types`` list (sliding-window and full attention) grows with the layers
    (:func:`ligo_fast.init.grown_layer_types`: each large layer takes the kind of the small layer it comes from).
    :data:`DROPPED_KEYS` and keys the class does not know (tokenizer ids of another class's checkpoint) are not
    inherited; the tokenizer ids the class knows are (the tokenizer stays the small model's).

    Raises:
        ValueError: a key of ``changes`` that the class does not know (the closest name is suggested; keys of
            the small config itself that its class does not know are dropped instead, as a full config.json has
            them), a head count the key/value heads cannot group, or a bad size.
    """
    cls = type(small_config)
    known = known_config_keys(cls)
    small_keys = set(small_config.to_dict())
    changes = {k: v for k, v in changes.items() if k in known or k not in small_keys}  # the small's own unknowns
    for k in changes:
        if k not in known:
            near = difflib.get_close_matches(k, sorted(known), n=1, cutoff=0.75)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ValueError(f"{k!r} is not a {cls.__name__} field{hint}")
    changes = dict(changes)
    heads0 = getattr(small_config, "num_attention_heads", None)
    heads = changes.get("num_attention_heads", heads0)
    kv0 = getattr(small_config, "num_key_value_heads", None)
    ints = all(isinstance(v, int) for v in (heads, heads0, changes.get("hidden_size", 0)))  # else: refused below
    if ints and heads != heads0 and kv0 is not None and "num_key_value_heads" not in changes:
        if (heads * kv0) % heads0:
            raise ValueError(
                f"num_attention_heads {heads0} -> {heads} keeps no whole group of query heads per key/value head "
                f"({heads0 / kv0:g} in the small model): give num_key_value_heads"
            )
        changes["num_key_value_heads"] = heads * kv0 // heads0
    if ints and "head_dim" in known and "head_dim" not in changes and getattr(small_config, "head_dim", None):
        if heads != heads0:
            changes["head_dim"] = small_config.head_dim
        elif "hidden_size" in changes:
            changes["head_dim"] = changes["hidden_size"] // heads
    types, layers = getattr(small_config, "layer_types", None), changes.get("num_hidden_layers")
    if isinstance(types, list) and isinstance(layers, int) and layers != len(types) and "layer_types" not in changes:
        changes["layer_types"] = grown_layer_types(types, layers)  # each large layer the kind of its source layer
    return model_config_from_dict(cls, {**inherited_fields(small_config, changes), **changes})
