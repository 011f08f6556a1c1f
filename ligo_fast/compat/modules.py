"""The official API's modules: depth and width coefficients and the Fused Linear/LayerNorm/Embedding.

Each Fused module stands in for one module of the large HF model and produces its weight from the small model's
``__sm_*`` tensors (held by the wrapped model) through :mod:`ligo_fast.ops`, with the official module and
parameter names, so that ``state_dict()`` is the official checkpoint layout. Inside a forward of the whole wrapped
model, every module reads the tensors bound on it instead (:mod:`ligo_fast.compat`'s hooks,
:func:`ligo_fast.execution.bind`: the produced ``weight`` and ``bias``, or a factored ``forward``).
Imports: ops, init, plan (the ``__sm_`` prefix).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..init import OFFICIAL_DEPTH_INITS, OFFICIAL_WIDTH_INITS, depth_init, width_init
from ..plan import SM


# ---------------------------------------------------------------------- coefficient modules
def _put(module: nn.Module, name: str, t: Tensor | None, learnable: bool) -> None:
    if learnable:
        module.register_parameter(name, None if t is None else nn.Parameter(t))
    else:
        module.register_buffer(name, t)


def check_depth_scheme(scheme: str, where: str) -> None:
    if scheme not in OFFICIAL_DEPTH_INITS:
        raise ValueError(
            f"{where}: unknown depth init scheme {scheme!r}; valid schemes: {', '.join(OFFICIAL_DEPTH_INITS)} "
            "(the function-preserving 'lossless' schemes are ligo_fast.grow's, not the official code's)"
        )


def check_width_scheme(scheme: str, where: str) -> None:
    if scheme not in OFFICIAL_WIDTH_INITS:
        raise ValueError(
            f"{where}: unknown width init scheme {scheme!r}; valid schemes: {', '.join(OFFICIAL_WIDTH_INITS)} "
            "(the function-preserving 'lossless' schemes are ligo_fast.grow's, not the official code's)"
        )


class FusedDepthParams(nn.Module):
    """Depth coefficients of one large layer: how it mixes the ``num_layers`` small layers.

    Attributes:
        coeffs_weight: (num_layers,), row ``layer_index`` of :func:`ligo_fast.init.depth_init`.
        coeffs_bias: (num_layers,) drawn the same way, or None when ``bias=False``.
        Both are Parameters when ``learnable``, else persistent buffers.
    """

    def __init__(
        self,
        layer_index: int,
        num_layers: int,
        bias: bool = False,
        learnable: bool = True,
        init_scheme: str = "rand",
        init_noise: float = 0.03,
    ):
        super().__init__()
        check_depth_scheme(init_scheme, "FusedDepthParams")
        if num_layers < 1 or layer_index < 0:
            raise ValueError(
                f"FusedDepthParams needs layer_index >= 0 and num_layers >= 1, got {layer_index}, {num_layers}"
            )
        if init_scheme.startswith("interlace") and layer_index >= 2 * num_layers:
            raise ValueError(
                f"init_scheme={init_scheme!r} maps large layer l to small layer l // 2, so it can grow "
                f"{num_layers} small layers to at most {2 * num_layers} large ones; layer_index={layer_index} "
                "is beyond that (use 'stackbert' or 'rand')"
            )
        self.layer_index, self.num_layers = layer_index, num_layers
        self.init_scheme, self.init_noise = init_scheme, init_noise
        _put(self, "coeffs_weight", torch.empty(num_layers), learnable)
        _put(self, "coeffs_bias", torch.empty(num_layers) if bias else None, learnable)
        self.reset_parameters()

    def _row(self) -> Tensor:
        # row l of the (l + 1, L1) table: the one-hot schemes depend on l, the random ones on nothing
        return depth_init(self.layer_index + 1, self.num_layers, self.init_scheme, self.init_noise)[self.layer_index]

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for t in (self.coeffs_weight, self.coeffs_bias):
            if t is not None:
                t.copy_(self._row())

    def extra_repr(self) -> str:
        return f"layer_index={self.layer_index}, num_layers={self.num_layers}, init={self.init_scheme!r}"


class FusedWidthParams(nn.Module):
    """One width matrix: ``coeffs_weight`` (large_dim - small_dim, small_dim), None when the width stays.

    The expansion it stands for is B = [I; coeffs_weight] of shape (large_dim, small_dim).
    """

    def __init__(
        self,
        small_dim: int,
        large_dim: int,
        learnable: bool = False,
        init_scheme: str = "rand",
        init_noise: float = 0.03,
    ):
        super().__init__()
        check_width_scheme(init_scheme, "FusedWidthParams")
        if large_dim < small_dim:
            raise ValueError(
                f"FusedWidthParams: the width shrinks from {small_dim} to {large_dim}; LiGO only grows widths"
            )
        self.small_dim, self.large_dim = small_dim, large_dim
        self.init_scheme, self.init_noise = init_scheme, init_noise
        grows = large_dim > small_dim
        _put(self, "coeffs_weight", torch.empty(large_dim - small_dim, small_dim) if grows else None, learnable)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.coeffs_weight is not None:
            n_new = self.large_dim - self.small_dim
            self.coeffs_weight.copy_(width_init(n_new, self.small_dim, self.init_scheme, self.init_noise))

    def extra_repr(self) -> str:
        return f"{self.small_dim} -> {self.large_dim}, init={self.init_scheme!r}"


# ---------------------------------------------------------------------- fused modules
def _residual(shape: tuple[int, ...], noise: float) -> nn.Parameter:
    return nn.Parameter(torch.empty(shape).uniform_(-noise, noise))


class _Fused(nn.Module):
    """Shared plumbing: the model holding the ``__sm_`` tensors, tied coefficient modules, small tensors.

    The model and the tied modules are kept out of ``_modules`` (plain instance attributes), so they appear
    in no state dict twice and ``deepcopy`` of the whole model maps them to the copies.
    """

    def _setup(self, model: nn.Module, module_name: str, layer_index: int) -> None:
        self.__dict__["_ligo_source"] = model
        self.module_name = module_name
        self.layer_index = layer_index
        self._sm = SM + module_name.replace(".", "_")
        self.path: str | None = None  # where create_ligo_from_model put it

    def _bound(self, which: str) -> Tensor | None:
        """This module's produced ``weight`` / ``bias`` bound on it for the current forward, if one is running."""
        return self.__dict__.get(which)

    def _small(self, what: str) -> Tensor | None:
        return getattr(self._ligo_source, f"{self._sm}_{what}", None)

    def _small_weight(self, dims: int) -> Tensor:
        W = self._small("weight")
        if W is None:
            raise ValueError(f"{type(self).__name__}({self.module_name!r}): the model has no {self._sm}_weight")
        want = dims + (1 if self.layer_index >= 0 else 0)
        if W.dim() != want:
            raise ValueError(
                f"{type(self).__name__}({self.module_name!r}): {self._sm}_weight has shape {tuple(W.shape)}, "
                f"expected {want} dims ({'stacked over the small layers last' if self.layer_index >= 0 else 'plain'})"
            )
        return W

    def _layers(self, t: Tensor) -> Tensor:
        """A small tensor as the ops want it: (L1, ...) (stacked layers last -> first), or (1, ...)."""
        return t.movedim(-1, 0) if self.layer_index >= 0 else t[None]

    def _tie(self, name: str, tie: nn.Module | None) -> None:
        self.__dict__[name] = tie

    def _width(self, side: str) -> FusedWidthParams:
        tie = self.__dict__.get(f"width_{side}_tie")
        return tie if tie is not None else getattr(self, f"fuse_width_{side}")

    def _own_width(self, side: str, tie, small: int, large: int, learn: bool, scheme: str, noise: float) -> None:
        if tie is None:
            setattr(self, f"fuse_width_{side}", FusedWidthParams(small, large, learn, scheme, noise))
        elif (tie.small_dim, tie.large_dim) != (small, large):
            raise ValueError(
                f"{type(self).__name__}({self.module_name!r}): width_{side}_tie grows {tie.small_dim} -> "
                f"{tie.large_dim} but this side grows {small} -> {large}"
            )
        self._tie(f"width_{side}_tie", tie)

    def _setup_depth(self, tie, num_layers: int, bias: bool, learn: bool, scheme: str, noise: float) -> None:
        if self.layer_index < 0:
            self._tie("depth_tie", None)
            return
        if tie is None:
            self.fuse_depth_coeffs = FusedDepthParams(self.layer_index, num_layers, bias, learn, scheme, noise)
        elif tie.num_layers != num_layers or (bias and tie.coeffs_bias is None):
            raise ValueError(
                f"{type(self).__name__}({self.module_name!r}): depth_tie mixes {tie.num_layers} layers"
                f"{'' if tie.coeffs_bias is not None else ' without bias coefficients'}, but this module needs "
                f"{num_layers}{' with bias coefficients' if bias else ''}"
            )
        self._tie("depth_tie", tie)

    def _depth(self, which: str, ref: Tensor) -> Tensor:
        """(1, L1): this module's coefficient row, or [[1.]] outside the blocks."""
        if self.layer_index < 0:
            return torch.ones(1, 1, device=ref.device)
        d = self.depth_tie if self.depth_tie is not None else self.fuse_depth_coeffs
        return getattr(d, f"coeffs_{which}")[None]

    def _produce(self, t: Tensor, which: str, E_out: Tensor | None, E_in: Tensor | None) -> Tensor:
        res = getattr(self, f"residual_{which}", None)
        depth = self._depth(which, t)
        if t.dim() - (1 if self.layer_index >= 0 else 0) == 1:  # a vector: bias, norm weight
            return ops.ligo_expand_vec(self._layers(t), depth, E_out, residual=None if res is None else res[None])[0]
        return ops.ligo_expand(self._layers(t), depth, E_out, E_in, residual=None if res is None else res[None])[0]


class FusedLinear(_Fused):
    """An ``nn.Linear`` whose weight and bias the LiGO operator produces from the small model.

    The small weight is ``model.__sm_<module_name with _>_weight``: (out, in, L1) inside the blocks
    (``layer_index >= 0``), (out, in) elsewhere; the bias, if the model has one, (out, L1) / (out,).
    """

    def __init__(
        self,
        model: nn.Module,
        module_name: str,
        in_features: int,
        out_features: int,
        layer_index: int = -1,
        init_scheme_depth: str = "rand",
        init_noise_depth: float = 0.03,
        learn_depth: bool = True,
        init_scheme_width: str = "rand",
        init_noise_width: float = 0.03,
        learn_width: bool = True,
        residual: bool = False,
        depth_tie: FusedDepthParams | None = None,
        width_in_tie: FusedWidthParams | None = None,
        width_out_tie: FusedWidthParams | None = None,
        residual_noise: float = 0.01,
    ):
        super().__init__()
        self._setup(model, module_name, layer_index)
        self.in_features, self.out_features = in_features, out_features
        W = self._small_weight(2)
        has_bias = self._small("bias") is not None
        self._setup_depth(depth_tie, W.shape[-1], has_bias, learn_depth, init_scheme_depth, init_noise_depth)
        width = (learn_width, init_scheme_width, init_noise_width)
        self._own_width("in", width_in_tie, W.shape[1], in_features, *width)
        self._own_width("out", width_out_tie, W.shape[0], out_features, *width)
        if residual:
            self.residual_weight = _residual((out_features, in_features), residual_noise)
            self.residual_bias = _residual((out_features,), residual_noise) if has_bias else None

    def get_params(self) -> tuple[Tensor, Tensor | None]:
        """(weight (out_features, in_features), bias (out_features,) or None)."""
        weight = self._bound("weight")
        if weight is not None:
            return weight, self._bound("bias")
        E_out, E_in = self._width("out").coeffs_weight, self._width("in").coeffs_weight
        weight = self._produce(self._small("weight"), "weight", E_out, E_in)
        b = self._small("bias")
        return weight, None if b is None else self._produce(b, "bias", E_out, None)

    def forward(self, input: Tensor) -> Tensor:
        return F.linear(input, *self.get_params())

    def extra_repr(self) -> str:
        sizes = f"in_features={self.in_features}, out_features={self.out_features}"
        return f"{self.module_name!r}, {sizes}, layer={self.layer_index}"


class FusedLayeredNorm(_Fused):
    """An ``nn.LayerNorm`` whose weight and bias are output-expanded (and depth-mixed inside the blocks)."""

    def __init__(
        self,
        model: nn.Module,
        module_name: str,
        normalized_shape,
        layer_index: int = -1,
        init_scheme_depth: str = "rand",
        init_noise_depth: float = 0.03,
        learn_depth: bool = True,
        init_scheme_width: str = "rand",
        init_noise_width: float = 0.03,
        learn_width: bool = True,
        eps: float = 1e-5,
        residual: bool = False,
        depth_tie: FusedDepthParams | None = None,
        width_out_tie: FusedWidthParams | None = None,
        residual_noise: float = 0.01,
    ):
        super().__init__()
        self._setup(model, module_name, layer_index)
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        if len(shape) != 1:
            raise ValueError(f"FusedLayeredNorm({module_name!r}) normalises over one dim, got {shape}")
        self.normalized_shape, self.eps = shape, eps
        W = self._small_weight(1)
        has_bias = self._small("bias") is not None
        self._setup_depth(depth_tie, W.shape[-1], has_bias, learn_depth, init_scheme_depth, init_noise_depth)
        self._own_width("out", width_out_tie, W.shape[0], shape[0], learn_width, init_scheme_width, init_noise_width)
        if residual:
            self.residual_weight = _residual(shape, residual_noise)
            self.residual_bias = _residual(shape, residual_noise) if has_bias else None

    def get_params(self) -> tuple[Tensor, Tensor | None]:
        """(weight (d,), bias (d,) or None)."""
        weight = self._bound("weight")
        if weight is not None:
            return weight, self._bound("bias")
        E = self._width("out").coeffs_weight
        weight = self._produce(self._small("weight"), "weight", E, None)
        b = self._small("bias")
        return weight, None if b is None else self._produce(b, "bias", E, None)

    def forward(self, input: Tensor) -> Tensor:
        return F.layer_norm(input, self.normalized_shape, *self.get_params(), self.eps)

    def extra_repr(self) -> str:
        return f"{self.module_name!r}, {self.normalized_shape}, eps={self.eps}, layer={self.layer_index}"


class FusedEmbedding(_Fused):
    """An ``nn.Embedding`` whose feature columns grow: weight = E_small @ B^T (+ residual); rows never grow.

    The width module is called ``fuse_width_out`` (the embedding's output side), as in the official code.
    """

    def __init__(
        self,
        model: nn.Module,
        module_name: str,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        init_scheme_width: str = "rand",
        init_noise_width: float = 0.03,
        learn_width: bool = True,
        residual: bool = False,
        width_out_tie: FusedWidthParams | None = None,
        residual_noise: float = 0.01,
    ):
        super().__init__()
        self._setup(model, module_name, -1)
        self._tie("depth_tie", None)
        W = self._small_weight(2)
        if W.shape[0] != num_embeddings:
            raise ValueError(
                f"FusedEmbedding({module_name!r}): the small table has {W.shape[0]} rows but num_embeddings="
                f"{num_embeddings}; the rows (a vocabulary or position table) never grow"
            )
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx, self.max_norm, self.norm_type = padding_idx, max_norm, norm_type
        self.scale_grad_by_freq, self.sparse = scale_grad_by_freq, sparse
        self._own_width(
            "out", width_out_tie, W.shape[1], embedding_dim, learn_width, init_scheme_width, init_noise_width
        )
        if residual:
            self.residual_weight = _residual((num_embeddings, embedding_dim), residual_noise)

    def get_params(self) -> Tensor:
        """weight (num_embeddings, embedding_dim)."""
        weight = self._bound("weight")
        if weight is not None:
            return weight
        return self._produce(self._small("weight"), "weight", None, self._width("out").coeffs_weight)

    def forward(self, input: Tensor) -> Tensor:
        w = self.get_params()
        return F.embedding(
            input, w, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse
        )

    def extra_repr(self) -> str:
        return f"{self.module_name!r}, {self.num_embeddings}, {self.embedding_dim}"


FUSED = (FusedLinear, FusedLayeredNorm, FusedEmbedding)
