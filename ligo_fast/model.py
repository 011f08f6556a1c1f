"""LiGOModel: a large Hugging Face model whose weights are produced by the LiGO operator.

The operator's tensors live in ``self.op`` in a layer-major layout the kernels like:
small encoder weights ``(L1, out, in)``, depth coefficients ``(L2, L1)`` per module kind, per-layer width
matrices and residuals ``(L2, ...)``. ``state_dict()`` translates to and from the official checkpoint
layout (``__sm_*`` stacked along a last layer axis, one key per large layer, ...), so official operator
checkpoints load strictly and ours load into the official code.

Each forward produces every large weight with one :func:`ligo_fast.ops.ligo_expand` call per module kind
(all large layers at once) and one multi-problem vector call for all biases and norm weights, then runs the
large HF model on them through :func:`torch.func.functional_call`. The large model's own copies of the
produced parameters are deleted, so they cost no memory.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from . import ops
from .arch import EMBEDDING, LINEAR, NORM, Arch, Module, arch_for
from .config import LiGOConfig
from .init import depth_init, width_init

SM = "__sm_"  # official prefix of the small model's tensors


def _sm_key(key: str) -> str:
    return SM + key.replace(".", "_")


def _san(path: str) -> str:
    return path.replace(".", "__")


@dataclass
class _Slot:
    """One module kind: a block module over all large layers, or one global module."""

    mod: Module
    layered: bool
    w: str  # internal name of the small weight: stacked (L1, ...) if layered, else as in the small model
    b: str | None
    depth_w: str | None  # (L2, L1), layered only
    depth_b: str | None
    e_rows: list[str | None]  # width matrix of the 2-D weight view's rows (op's E_out), one per part
    e_cols: list[str | None]  # ... of its columns (op's E_in), one per part
    res_w: str | None
    res_b: str | None
    targets_w: list[str]  # large-model parameter names, one per large layer (or one)
    targets_b: list[str]
    shape_w: tuple[int, ...]  # large tensor shape of one target
    view_w: tuple[int, int]  # its 2-D (rows, cols) view in the small model

    @property
    def split_rows(self) -> bool:
        """The fused parts lie along the rows (else along the columns)."""
        return len(self.e_rows) > 1


class _Op(nn.Module):
    """Holds the operator's tensors by internal name (parameters or buffers)."""

    def put(self, name: str, t: Tensor, trainable: bool) -> None:
        if trainable:
            self.register_parameter(name, nn.Parameter(t))
        else:
            self.register_buffer(name, t)

    def get(self, name: str | None) -> Tensor | None:
        return None if name is None else getattr(self, name)


class _Call(nn.Module):
    """Lets functional_call run a method other than forward (e.g. ``generate``) of the large model."""

    def __init__(self, large: nn.Module, method: str):
        super().__init__()
        self.large = large
        self.method = method

    def forward(self, *args, **kwargs):
        return getattr(self.large, self.method)(*args, **kwargs)


class LiGOModel(nn.Module):
    """A large model grown from a small one by a trainable LiGO operator. Build it with :func:`ligo_fast.grow`.

    It is called exactly like the large HF model (same arguments, same outputs); its trainable parameters are
    the operator's. ``materialize()`` returns a plain HF model with the produced weights.
    """

    def __init__(self, small_model: nn.Module, large_config, config: LiGOConfig):
        super().__init__()
        arch = arch_for(small_model)
        _check_family(arch, small_model.config, large_config)
        arch = arch.for_configs(small_model.config, large_config)
        self.arch: Arch = arch
        self.ligo_config = config
        self._hf_class = type(small_model)
        self.L1 = arch.num_layers(small_model.config)
        self.L2 = arch.num_layers(large_config)
        if self.L2 < self.L1:
            raise ValueError(
                f"the layer count shrinks: the small model has {self.L1} layers, the large config {self.L2}"
            )
        small_sd = small_model.state_dict()
        _check_finite(small_sd)
        ref = next(small_model.parameters())  # the large model's leftovers follow the small model's device and dtype
        large = self._hf_class(large_config).to(device=ref.device, dtype=ref.dtype)
        self._build(arch, small_sd, large, config)
        self.large = large
        self.register_state_dict_post_hook(_state_dict_to_official)
        self.register_load_state_dict_pre_hook(_state_dict_from_official)

    # ------------------------------------------------------------------ construction
    def _build(self, arch: Arch, small_sd: dict[str, Tensor], large: nn.Module, cfg: LiGOConfig) -> None:
        gen = torch.Generator().manual_seed(cfg.seed) if cfg.seed is not None else None
        self.op = _Op()
        self._rules: list[tuple[str, str, str]] = []  # (internal, official key template, plain|stack|split)
        self._slots: list[_Slot] = []
        large_sd = dict(large.state_dict(keep_vars=True))
        large_params = dict(large.named_parameters(remove_duplicate=False))
        L1, L2 = self.L1, self.L2
        layer0 = arch.layer_path(0)

        # 1. the small model's tensors, all of them (the official layout keeps even unused ones)
        in_layers = tuple(arch.layer_path(j) + "." for j in range(L1))
        for k, v in small_sd.items():
            if not k.startswith(in_layers):
                self.op.put(_sm_key(k), v.detach().clone(), cfg.train_small)
                self._rules.append((_sm_key(k), _sm_key(k), "plain"))
        for k in sorted({k[len(layer0) + 1 :] for k in small_sd if k.startswith(layer0 + ".")}):
            stacked = torch.stack([small_sd[f"{arch.layer_path(j)}.{k}"].detach() for j in range(L1)])
            self.op.put(_sm_key(k), stacked.contiguous(), cfg.train_small)
            self._rules.append((_sm_key(k), _sm_key(k), "stack"))

        # 2. which modules this model has; tied duplicates in the large model are produced once
        modules: list[tuple[Module, bool]] = []
        seen_params: dict[int, str] = {}
        for mod, layered in [(m, True) for m in arch.layer_modules] + [(m, False) for m in arch.modules]:
            key = f"{layer0}.{mod.key(mod.weight)}" if layered else mod.key(mod.weight)
            if key not in small_sd and key not in large_sd and not layered:
                continue  # an optional global module (a pooler) this model does not have
            for where, sd in (("small model", small_sd), ("large model", large_sd)):
                if key not in sd:
                    raise ValueError(f"the {where} has no tensor {key!r}, which the {arch.family} description names")
            pid = id(large_params.get(key))
            if key in large_params and pid in seen_params:
                continue  # e.g. lm_head tied to the token embedding: the alias step below fills it in
            if key in large_params:
                seen_params[pid] = key
            modules.append((mod, layered))

        # 3. width sizes: every side that uses a width must agree on (small, large)
        sizes: dict[str, tuple[int, int, str]] = {}

        def side(width, small: int, big: int, where: str) -> None:
            names = _parts(width)
            if not names:
                if small != big:
                    raise ValueError(
                        f"{where} has size {small} in the small model and {big} in the large one, but that axis "
                        "does not grow (a vocabulary, position table, label set or patch)"
                    )
                return
            if small % len(names) or big % len(names):
                raise ValueError(f"{where}: sizes {small} and {big} do not split into {len(names)} equal parts")
            small, big = small // len(names), big // len(names)
            for w in names:
                if big < small:
                    raise ValueError(
                        f"width {w!r} shrinks: {where} has size {small} in the small model but {big} in the large one"
                    )
                if w in sizes and sizes[w][:2] != (small, big):
                    raise ValueError(f"width {w!r} is {sizes[w][:2]} at {sizes[w][2]} but {(small, big)} at {where}")
                sizes.setdefault(w, (small, big, where))

        for mod, layered in modules:
            key = f"{layer0}.{mod.key(mod.weight)}" if layered else mod.key(mod.weight)
            s, b = _view2d(mod, small_sd[key].shape), _view2d(mod, large_sd[key].shape)
            rows, cols = _row_col_widths(mod)
            side(rows, s[0], b[0], f"{key} rows")
            side(cols, s[1], b[1], f"{key} columns")

        # 4. width matrices
        def new_width(width: str, layers: int | None) -> Tensor:
            small, big, _ = sizes[width]
            draw = lambda: width_init(big - small, small, cfg.width_init, cfg.width_noise, gen)  # noqa: E731
            return draw() if layers is None else torch.stack([draw() for _ in range(layers)])

        def grows(w: str | None) -> bool:
            return w is not None and w in sizes and sizes[w][0] != sizes[w][1]

        tied: dict[str, str] = {}
        if cfg.tie:
            for wname, spec in arch.widths.items():
                if grows(wname):
                    tied[wname] = "width__" + wname
                    self.op.put(tied[wname], new_width(wname, L2 if spec.per_layer else None), cfg.train_width)
                    self._rules.append(
                        (tied[wname], spec.key + ".coeffs_weight", "split" if spec.per_layer else "plain")
                    )

        def width_for(mod: Module, layered: bool, wname: str | None, suffix: str) -> str | None:
            if not grows(wname):
                return None
            if cfg.tie:
                return tied[wname]
            name = f"width__{_san(_ident(mod))}__{suffix}"
            if name not in self.op._parameters and name not in self.op._buffers:
                self.op.put(name, new_width(wname, L2 if layered else None), cfg.train_width)
                key = f"{_full(arch, mod, layered)}.fuse_width_{suffix}.coeffs_weight"
                self._rules.append((name, key, "split" if layered else "plain"))
            return name

        # 5. one slot per module kind
        for mod, layered in modules:
            full = _full(arch, mod, layered)
            ident = _san(_ident(mod))
            small_w = _sm_key(mod.key(mod.weight))
            bias_key = mod.key(mod.bias) if mod.bias else None
            probe = f"{layer0}.{bias_key}" if layered else bias_key
            small_b = _sm_key(bias_key) if bias_key and probe in small_sd else None
            if bias_key and (probe in small_sd) != (probe in large_sd):
                has, lacks = ("small", "large") if probe in small_sd else ("large", "small")
                raise ValueError(f"{probe} exists in the {has} model but not in the {lacks} one (bias settings differ)")
            rows, cols = _row_col_widths(mod)
            # the official code calls the feature side of embeddings and norms "out", of linears out/in by role
            rsuffix, csuffix = ("in", "out") if mod.transposed else ("out", "in")
            if mod.kind == EMBEDDING:
                csuffix = "out"
            e_rows = [width_for(mod, layered, w, rsuffix) for w in (_parts(rows) or (None,))]
            e_cols = [width_for(mod, layered, w, csuffix) for w in (_parts(cols) or (None,))]
            depth_w = depth_b = None
            if layered:
                depth_w = f"depth__{ident}__weight"
                self.op.put(depth_w, depth_init(L2, L1, cfg.depth_init, cfg.depth_noise, gen), cfg.train_depth)
                self._rules.append((depth_w, f"{full}.fuse_depth_coeffs.coeffs_weight", "split"))
                if small_b is not None:
                    depth_b = f"depth__{ident}__bias"
                    self.op.put(depth_b, depth_init(L2, L1, cfg.depth_init, cfg.depth_noise, gen), cfg.train_depth)
                    self._rules.append((depth_b, f"{full}.fuse_depth_coeffs.coeffs_bias", "split"))
            layer_names = [arch.layer_path(l) + "." for l in range(L2)] if layered else [""]
            targets_w = [p + mod.key(mod.weight) for p in layer_names]
            targets_b = [p + bias_key for p in layer_names] if small_b else []
            res_w = res_b = None
            if cfg.residual:
                res_w, res_b = f"residual__{ident}__weight", (f"residual__{ident}__bias" if small_b else None)
                for name, tgt, what in ((res_w, targets_w, "weight"), (res_b, targets_b, "bias")):
                    if name is None:
                        continue
                    shape = tuple(large_sd[tgt[0]].shape)
                    r = torch.empty((L2, *shape) if layered else shape)
                    self.op.put(name, r.uniform_(-cfg.residual_noise, cfg.residual_noise, generator=gen), True)
                    self._rules.append((name, f"{full}.residual_{what}", "split" if layered else "plain"))
            sw = small_sd[f"{layer0}.{mod.key(mod.weight)}" if layered else mod.key(mod.weight)].shape
            self._slots.append(
                _Slot(
                    mod,
                    layered,
                    small_w,
                    small_b,
                    depth_w,
                    depth_b,
                    e_rows,
                    e_cols,
                    res_w,
                    res_b,
                    targets_w,
                    targets_b,
                    tuple(large_sd[targets_w[0]].shape),
                    _view2d(mod, sw),
                )
            )

        # 6. the large model keeps only what the operator does not produce, frozen
        produced = {t for s in self._slots for t in s.targets_w + s.targets_b}
        by_id: dict[int, list[str]] = {}
        for name, p in large_params.items():
            by_id.setdefault(id(p), []).append(name)
        self._aliases: dict[str, list[str]] = {}  # produced name -> other names tied to it in the large model
        for names in by_id.values():
            hit = [n for n in names if n in produced]
            if hit:
                self._aliases[hit[0]] = [n for n in names if n != hit[0]]
                for n in names:
                    parent, _, leaf = n.rpartition(".")
                    del large.get_submodule(parent)._parameters[leaf]
        for p in large.parameters():
            p.requires_grad_(False)

    # ------------------------------------------------------------------ production
    def produce(self, backend: str = "auto") -> dict[str, Tensor]:
        """All produced large-model tensors by HF parameter name (views into one tensor per module kind)."""
        return self._produce(self._slots, None, backend)

    def _produce(
        self, slots: list[_Slot], layer: int | None, backend: str = "auto", skip_weights: frozenset = frozenset()
    ) -> dict[str, Tensor]:
        """Produce ``slots``; ``layer``: only that large layer of the block modules (memory-lean mode).

        ``skip_weights``: slots (by their small weight's name) whose weight is not produced (factored mode).
        """
        g = self.op.get
        out: dict[str, Tensor] = {}
        vec_problems: list[tuple[Tensor, Tensor, Tensor | None, Tensor | None]] = []
        vec_targets: list[tuple[list[str], int]] = []  # (names, number of parts to concatenate)

        def sel(t: Tensor | None, per_layer: bool = True) -> Tensor | None:
            """The slice of a per-layer tensor (depth, residual, 3-D width) for ``layer``."""
            if t is None or layer is None or not per_layer:
                return t
            return t[layer : layer + 1]

        def width(name: str | None, layered: bool) -> Tensor | None:
            t = g(name)
            return sel(t, layered and t is not None and t.dim() == 3)

        def add_vec(v, depth, es: list, res, names: list[str], layered: bool) -> None:
            parts = v.chunk(len(es), dim=-1) if len(es) > 1 else (v,)
            rparts = res.chunk(len(es), dim=-1) if (res is not None and len(es) > 1) else (res,) * len(es)
            for vp, e, rp in zip(parts, es, rparts, strict=True):
                vec_problems.append((vp, depth, width(e, layered), rp))
            vec_targets.append((names, len(es)))

        one = torch.ones(1, 1, device=self.device, dtype=torch.float32)  # depth of a module without layers
        for s in slots:
            L = s.layered
            W = g(s.w)
            depth = sel(g(s.depth_w)) if L else one
            res = sel(_lift(g(s.res_w), L), L)
            targets_w = s.targets_w if (layer is None or not L) else [s.targets_w[layer]]
            Wl = W if L else W[None]
            if s.mod.kind == NORM:
                add_vec(Wl, depth, s.e_rows, res, targets_w, L)
            elif s.w not in skip_weights:
                W2 = Wl.reshape(Wl.shape[0], *s.view_w)
                n = max(len(s.e_rows), len(s.e_cols))
                dim = 1 if s.split_rows else 2
                Wparts = W2.chunk(n, dim=dim) if n > 1 else (W2,)
                big = [
                    ops.ligo_expand(
                        Wp,
                        depth,
                        width(s.e_rows[i if s.split_rows else 0], L),
                        width(s.e_cols[0 if s.split_rows else i], L),
                        residual=None
                        if (n > 1 or res is None)
                        else res.reshape(res.shape[0], *_view2d(s.mod, s.shape_w)),
                        backend=backend,
                    )
                    for i, Wp in enumerate(Wparts)
                ]
                big = big[0] if n == 1 else torch.cat(big, dim=dim)
                if n > 1 and res is not None:
                    big = big + res.reshape(big.shape).to(big.dtype)
                for name, t in zip(targets_w, big.unbind(0), strict=True):
                    out[name] = t.reshape(s.shape_w)
            if s.b is not None:
                depth_b = sel(g(s.depth_b)) if L else one
                bl = g(s.b) if L else g(s.b)[None]
                rows_parts = s.e_rows if s.mod.kind != EMBEDDING else [None]
                # a bias runs along the output side: the rows, or the columns of a transposed weight
                es = s.e_cols if s.mod.transposed else rows_parts
                targets_b = s.targets_b if (layer is None or not L) else [s.targets_b[layer]]
                add_vec(bl, depth_b, es, sel(_lift(g(s.res_b), L), L), targets_b, L)
        results = iter(ops.ligo_expand_vec_multi(vec_problems, backend=backend))
        for names, n in vec_targets:
            t = next(results) if n == 1 else torch.cat([next(results) for _ in range(n)], dim=-1)
            for name, row in zip(names, t.unbind(0), strict=True):
                out[name] = row
        for name, others in self._aliases.items():
            if name in out:
                for o in others:
                    out[o] = out[name]
        return out

    # ------------------------------------------------------------------ HF-like surface
    @property
    def config(self):
        return self.large.config

    @property
    def device(self) -> torch.device:
        return next(self.op.get(s.w) for s in self._slots).device

    def forward(self, *args, **kwargs):
        plan = self.factored_plan(args, kwargs)
        skip = frozenset(self._slots[i].w for i in plan)
        with _factored_modules(self, plan):
            if not self.lean_now():
                params = self._produce(self._slots, None, skip_weights=skip)
                return functional_call(self.large, params, args, kwargs, tie_weights=False)
            from .lean import lean_layers

            glob = self._produce([s for s in self._slots if not s.layered], None)
            with lean_layers(self, skip_weights=skip):
                return functional_call(self.large, glob, args, kwargs, tie_weights=False)

    def factored_plan(self, args=(), kwargs=None) -> list[int]:
        """Indices of the slots whose block linears run factored in this forward (``LiGOConfig.linear_mode``)."""
        mode = self.ligo_config.linear_mode
        if mode == "materialize":
            return []
        cands = [
            i
            for i, s in enumerate(self._slots)
            if s.layered
            and s.mod.kind == LINEAR
            and not s.mod.transposed
            and len(s.shape_w) == 2
            and len(s.e_rows) == 1
            and len(s.e_cols) == 1
        ]
        if mode == "factored":
            return cands
        from .factored import costs, device_model

        T = _count_tokens(args, kwargs or {}, self.config)
        dev = device_model(self.device)
        plan = []
        for i in cands:
            s = self._slots[i]
            (o1, i1), (o2, i2) = s.view_w, s.shape_w
            nbytes = self.op.get(s.w).element_size()
            mat, fact = costs(T, o1, i1, o2, i2, self.L1, nbytes, dev)
            if s.res_w is None and fact < mat:
                plan.append(i)
        return plan

    def block_weight_bytes(self) -> int:
        """Bytes of all produced block weights of one forward (what memory-lean mode avoids keeping)."""
        total = 0
        for s in self._slots:
            if s.layered:
                n = 1
                for d in s.shape_w:
                    n *= d
                total += self.L2 * n * self.op.get(s.w).element_size()
        return total

    def lean_now(self) -> bool:
        """Whether this forward uses memory-lean expansion (``LiGOConfig.lean``; None = auto)."""
        lean = self.ligo_config.lean
        if lean is not None:
            return bool(lean)
        return torch.is_grad_enabled() and self.block_weight_bytes() >= self.ligo_config.lean_min_mb * 2**20

    def generate(self, *args, **kwargs):
        """``generate`` of the large HF model, with the produced weights (only where the HF class has it)."""
        if not hasattr(self.large, "generate"):
            raise AttributeError(f"{type(self.large).__name__} has no generate()")
        with torch.no_grad():
            # as Parameters, so HF's generate finds a device and dtype through model.parameters()
            params = {"large." + k: nn.Parameter(v, requires_grad=False) for k, v in self.produce().items()}
        return functional_call(_Call(self.large, "generate"), params, args, kwargs, tie_weights=False)

    def materialize(self):
        """A fresh plain HF model of the large config holding the produced weights. See :func:`materialize`."""
        from .api import materialize

        return materialize(self)

    def save_operator(self, path) -> None:
        """Save the operator (safetensors, official layout) and a JSON of its configuration into directory ``path``."""
        from .checkpoint import save_operator

        save_operator(self, path)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        _check_checkpoint(self, state_dict, strict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def extra_repr(self) -> str:
        return f"{self.arch.family}: {self.L1} -> {self.L2} layers, {len(self._slots)} module kinds"


# ---------------------------------------------------------------------- helpers
def _full(arch: Arch, mod: Module, layered: bool) -> str:
    """Official module path; for block modules with ``{l}`` for the large layer index."""
    return f"{arch.layers}.{{l}}.{_ident(mod)}" if layered else _ident(mod)


def _row_col_widths(mod: Module):
    """Width names (or tuples of part names) of the 2-D weight view's rows and columns."""
    if mod.kind == EMBEDDING:
        return None, mod.out
    if mod.kind == NORM:
        return mod.out, None
    return (mod.inp, mod.out) if mod.transposed else (mod.out, mod.inp)


def _parts(width) -> tuple[str, ...]:
    if width is None:
        return ()
    return tuple(width) if isinstance(width, tuple) else (width,)


def _ident(mod: Module) -> str:
    """A module's name in the official key layout: its path, or path.tensor for a bare parameter."""
    return mod.path if mod.weight == "weight" else mod.key(mod.weight)


def _view2d(mod: Module, shape) -> tuple[int, int]:
    """The (rows, cols) the op sees: linear weights grow on dim 0 (conv kernels ride along), embeddings on the last."""
    shape = tuple(shape)
    if mod.kind == NORM:
        return (shape[0], 1)
    if mod.kind == EMBEDDING:
        n = 1
        for d in shape[:-1]:
            n *= d
        return (n, shape[-1])
    n = 1
    for d in shape[1:]:
        n *= d
    return (shape[0], n)


class _factored_modules:
    """Context: the planned block linears of ``model.large`` compute ``factored_linear`` instead of x @ W^T."""

    def __init__(self, model: LiGOModel, plan: list[int]):
        self.model, self.plan, self.mods = model, plan, []

    def __enter__(self):
        if not self.plan:
            return self
        from .factored import factored_linear
        from .reference import compute_dtype, depth_mix

        m, g = self.model, self.model.op.get
        self.shared: dict = {}  # x @ B_in, shared by the layers that read the same input (q/k/v, gate/up)
        for i in self.plan:
            s = m._slots[i]
            W = g(s.w)
            ct = compute_dtype(W.dtype)
            Wmix = depth_mix(W.to(ct), g(s.depth_w).to(ct))  # (L2, o1, i1): small-width sized
            Eo, Ei, R = g(s.e_rows[0]), g(s.e_cols[0]), g(s.res_w)
            for l, target in enumerate(s.targets_w):
                mod = m.large.get_submodule(target.rpartition(".")[0])
                eo = Eo[l] if (Eo is not None and Eo.dim() == 3) else Eo
                ei = Ei[l] if (Ei is not None and Ei.dim() == 3) else Ei
                r = None if R is None else R[l]

                def fwd(x, _w=Wmix[l], _eo=eo, _ei=ei, _r=r, _mod=mod):
                    return factored_linear(x, _w, _eo, _ei, _r, getattr(_mod, "bias", None), self.shared)

                mod.forward = fwd
                self.mods.append(mod)
        return self

    def __exit__(self, *exc):
        for mod in self.mods:
            del mod.forward
        self.mods = []
        self.shared = {}
        return False


def _count_tokens(args, kwargs, config) -> int:
    """Tokens in this batch, from input_ids / inputs_embeds / pixel_values (1 when none is found)."""
    for key in ("input_ids", "inputs_embeds", "pixel_values"):
        t = kwargs.get(key)
        if t is None and args and key == "input_ids" and isinstance(args[0], Tensor):
            t = args[0]
        if t is None:
            continue
        if key == "input_ids":
            return t.numel()
        if key == "inputs_embeds":
            return t.numel() // t.shape[-1]
        patches = (getattr(config, "image_size", 1) // max(getattr(config, "patch_size", 1), 1)) ** 2 + 1
        return t.shape[0] * patches
    return 1


def _lift(t: Tensor | None, layered: bool) -> Tensor | None:
    return t if (t is None or layered) else t[None]


def _check_family(arch: Arch, small_config, large_config) -> None:
    mt = getattr(large_config, "model_type", None)
    if mt not in arch.model_types:
        raise ValueError(
            f"the large config is a {mt!r} config but the small model is a {arch.family} model "
            f"({', '.join(arch.model_types)}); grow within one family"
        )


def _check_finite(sd: dict[str, Tensor]) -> None:
    for k, v in sd.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            kind = "NaN" if torch.isnan(v).any() else "Inf"
            raise ValueError(f"the small model's {k} contains {kind}; refusing to grow from it")


def _state_dict_to_official(module: LiGOModel, sd, prefix, local_metadata) -> None:
    new = OrderedDict()
    op_pre, large_pre = prefix + "op.", prefix + "large."
    for internal, official, rule in module._rules:
        v = sd.pop(op_pre + internal)
        if rule != "plain" and hasattr(v, "full_tensor"):  # FSDP2-sharded (DTensor): a collective, on every rank
            v = v.full_tensor()
        if rule == "plain":
            new[prefix + official] = v
        elif rule == "stack":
            new[prefix + official] = v.movedim(0, -1).contiguous()
        else:
            for l, row in enumerate(v.unbind(0)):
                new[prefix + official.format(l=l)] = row
    for k in [k for k in sd if k.startswith(large_pre)]:
        new[prefix + k[len(large_pre) :]] = sd.pop(k)
    for k in [k for k in sd if k.startswith(prefix)]:
        new[k] = sd.pop(k)
    sd.update(new)


def _state_dict_from_official(module: LiGOModel, sd, prefix, *args) -> None:
    op_pre = prefix + "op."
    for internal, official, rule in module._rules:
        if rule == "split":
            keys = [prefix + official.format(l=l) for l in range(module.L2)]
            if all(k in sd for k in keys):
                sd[op_pre + internal] = torch.stack([sd.pop(k) for k in keys])
        elif prefix + official in sd:
            v = sd.pop(prefix + official)
            sd[op_pre + internal] = v.movedim(-1, 0) if rule == "stack" else v
    for k in module.large.state_dict():
        if prefix + k in sd:
            sd[prefix + "large." + k] = sd.pop(prefix + k)


def _check_checkpoint(model: LiGOModel, state_dict, strict: bool) -> None:
    """Name the first key or shape that does not fit, before torch's own (long) error."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
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
