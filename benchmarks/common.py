"""What every ligo_fast benchmark shares: the official LiGO computation, the shapes, timing, peak memory.

Imported by the ``bench_*.py`` scripts beside it (``python benchmarks/bench_x.py`` puts this folder on the
path). Uses the library's public API only. ``python benchmarks/common.py --check`` runs the self-check below.

The official implementation (VITA-Group/LiGO, ``ligo.py``), reproduced here in our own code
==========================================================================================

The baseline every benchmark compares against is the official code's computation, module by module. It is
written here from the official code's semantics (read, not copied) and checked against tensors the official
code produced (``tests/fixtures/*``: ``check_official``). What each piece reproduces:

* ``official_depth_mix``: ``FusedLinear/FusedLayeredNorm.get_params``' depth mix: the small layers' tensors
  are kept stacked along a *last* axis, (out, in, L1) or (d, L1), and one large layer's tensor is the
  elementwise product with its coefficient vector (L1,), summed over that axis (no GEMM; an (out, in, L1)
  temporary per module and call). Weights use ``coeffs_weight``, biases ``coeffs_bias``.
* ``official_grow_matrix``: the width expansion of a linear weight: the input side first,
  ``W = cat([W, W @ E_in^T], dim=1)``, then the output side, ``W = cat([W, E_out @ W], dim=0)`` (E_in^T as
  the transposed view, as ``torch.transpose`` gives it); a side whose width matrix is None stays.
* ``official_grow_vector``: biases and norm weights/biases: ``cat([v, E_out @ v])``.
* ``official_grow_embedding``: ``FusedEmbedding``: only the feature columns grow, ``cat([W, W @ E^T], dim=1)``;
  no depth mixing outside the blocks.
* residual mode: the residual tensor is added after the expansion (weight and bias).
* ``OfficialLinear`` / ``OfficialNorm`` / ``OfficialEmbedding``: the ``Fused*`` modules. Each produces its own
  weight and bias *inside its forward*, every call, from the small tensors it reads off the wrapped model, its
  own ``fuse_depth_coeffs`` (one ``FusedDepthParams`` per module and large layer, weight and bias vectors) and
  its width matrices (tied ones shared by reference, untied ones its own ``fuse_width_in/out``), then calls
  ``F.linear`` / ``F.layer_norm`` / ``F.embedding``.
* ``official_wrap``: ``create_ligo_from_model``: the small model's tensors become buffers of the large model
  named ``__sm_`` + key with dots as underscores; those of the blocks are layer 0's parameters stacked over the
  small layers along a new last dim and named by their key inside a block; the large model's Linear,
  LayerNorm and Embedding modules are replaced in place; tied width matrices (``fuse_tie_param``) are
  registered where the official code puts them (``<embeddings>.fuse_width_emb``, ``<layer l>.fuse_width_query``
  ...). Its ``state_dict()`` is therefore the official checkpoint layout, which ``LiGOModel`` and
  ``ligo_fast.compat`` also use: the benchmarks load the official provider's state into ours and compare.

Beyond the official coverage (BERT/RoBERTa, LayerNorm), for the Llama shape: which width each side of each
module uses comes from ligo_fast's architecture description (``ligo_fast.arch``, data; for BERT it equals the
official tying, which the fixture check confirms), RMSNorm weights are produced like LayerNorm weights (no
bias) and applied with HF's RMSNorm formula, and biasless linears have no ``coeffs_bias``.

Why our own official modules, and not "ligo_fast.compat's modules with the official production function":
the official cost is the production *and* the structure around it (hundreds of tiny coefficient tensors that
AdamW updates, per-module Python in every forward). compat reproduces the structure, but swapping its
production would mean overriding private methods of a library class (applications use the public API only),
and the baseline would share code with one of the things it is compared with, so a change in compat would
silently move the baseline. These modules are independent of the library's compute path, and
``check_official`` ties them to the official numbers instead.

Timing, memory, shapes
======================

* ``time_interleaved``: providers run round-robin, the order rotated every round, so that a burst of load
  from other processes spreads over all of them (a shared machine); median and 20th/80th percentiles of the
  per-round samples. CPU: host clock (``time.perf_counter``). GPU: CUDA events around the sample, then a
  synchronize. A sample repeats a short function until it lasts ``min_sample_s``.
* ``measure_peak``: each provider in a fresh process (multiprocessing forkserver, torch / transformers /
  ligo_fast preloaded, nothing built): build, 2 warm-up steps (optimizer state exists), then one measured
  step. GPU: ``max_memory_allocated`` after ``reset_peak_memory_stats`` (tensors alive, allocator cache
  excluded). CPU: the resident set's high-water mark, reset through ``/proc/self/clear_refs`` just before the
  step, minus the RSS before anything was built; glibc is told to serve allocations >= 128 KiB by mmap so that
  freed tensors leave the RSS at once (RSS is pages, not tensors: a few MiB coarse; ``*`` marks a whole-process
  high-water mark where clear_refs is not writable).
* ``SHAPES``: the benchmark shapes as pairs of HF configs (no dropout, untied head as in the official
  fixtures): ``bert`` (the "BERT-Base shape", 6L/512H -> 12L/768H), ``llama`` (8L/512H -> 16L/1024H, GQA),
  ``llama-xl`` (16L/2048H -> 32L/4096H, the expansion kernels' roofline shape), each with a ``quick`` variant
  for CPU smoke runs; ``lean_llama`` for the lean-scaling table.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import math
import multiprocessing as mp
import os
import platform
import queue
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from torch import Tensor, nn

from ligo_fast.arch import EMBEDDING, LINEAR, NORM, arch_for

SM = "__sm_"  # official prefix of the small model's tensors on the wrapped large model
MiB = 2**20
FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ================================================================================ the official computation
def official_depth_mix(stacked: Tensor, coeffs: Tensor) -> Tensor:
    """One large layer's tensor: ``stacked`` (..., L1) times ``coeffs`` (L1,), summed over the last axis."""
    return torch.sum(stacked * coeffs, -1)


def official_grow_matrix(w: Tensor, E_out: Tensor | None, E_in: Tensor | None) -> Tensor:
    """w (o1, i1) -> (o2, i2): columns first (E_in (i2-i1, i1)), then rows (E_out (o2-o1, o1))."""
    if E_in is not None:
        w = torch.cat([w, torch.matmul(w, torch.transpose(E_in, 0, 1))], 1)
    if E_out is not None:
        w = torch.cat([w, torch.matmul(E_out, w)], 0)
    return w


def official_grow_vector(v: Tensor, E_out: Tensor | None) -> Tensor:
    """v (d1,) -> (d2,) with E_out (d2-d1, d1)."""
    return v if E_out is None else torch.cat([v, torch.matmul(E_out, v)], 0)


def official_grow_embedding(w: Tensor, E: Tensor | None) -> Tensor:
    """An embedding table (n, d1) -> (n, d2): only the feature columns grow."""
    return w if E is None else torch.cat([w, torch.matmul(w, torch.transpose(E, 0, 1))], 1)


def official_weight(stacked: Tensor, coeffs: Tensor, E_out: Tensor | None, E_in: Tensor | None) -> Tensor:
    """One large layer's block tensor: (o1, i1, L1) -> (o2, i2), or a vector (o1, L1) -> (o2,)."""
    w = official_depth_mix(stacked, coeffs)
    return official_grow_vector(w, E_out) if w.dim() == 1 else official_grow_matrix(w, E_out, E_in)


# ================================================================================ the official module structure
def _uniform_rows(rows: int, cols: int, gen: torch.Generator) -> Tensor:
    """The official ``rand`` scheme: uniform [0, 1) rows normalised to sum 1 (values are overwritten anyway)."""
    u = torch.rand(rows, cols, generator=gen)
    return u / u.sum(-1, keepdim=True)


class OfficialWidth(nn.Module):
    """``FusedWidthParams``: ``coeffs_weight`` (large - small, small), or None when the width stays."""

    def __init__(self, small: int, large: int, gen: torch.Generator):
        super().__init__()
        self.small_dim, self.large_dim = small, large
        self.coeffs_weight = nn.Parameter(_uniform_rows(large - small, small, gen)) if large > small else None


class OfficialDepth(nn.Module):
    """``FusedDepthParams`` of one module in one large layer: ``coeffs_weight`` (L1,), ``coeffs_bias`` (L1,)."""

    def __init__(self, L1: int, bias: bool, gen: torch.Generator):
        super().__init__()
        self.coeffs_weight = nn.Parameter(_uniform_rows(1, L1, gen)[0])
        self.coeffs_bias = nn.Parameter(_uniform_rows(1, L1, gen)[0]) if bias else None


class _OfficialFused(nn.Module):
    """Shared plumbing: reads ``__sm_<name>_weight/_bias`` off the wrapped model; own or tied width matrices.

    The wrapped model and tied widths sit in ``__dict__`` (the official code holds them in closures), so they are
    no submodules of this one and appear once in the state dict, where they are registered.
    """

    def _setup(self, root: nn.Module, name: str, layered: bool, L1: int, gen: torch.Generator) -> None:
        self.__dict__["root"] = root
        self.sm_prefix = SM + name.replace(".", "_")
        self.fuse_depth_coeffs = OfficialDepth(L1, self.small("bias") is not None, gen) if layered else None

    def small(self, what: str) -> Tensor | None:
        return getattr(self.root, f"{self.sm_prefix}_{what}", None)

    def _width(self, side: str, tie: OfficialWidth | None, small: int, large: int, gen: torch.Generator) -> None:
        if tie is None:  # the official module then owns one (coeffs None where the side does not grow)
            tie = OfficialWidth(small, large, gen)
            setattr(self, f"fuse_width_{side}", tie)
        self.__dict__[f"width_{side}"] = tie

    def _residual(self, name: str, shape: tuple[int, ...], noise: float, gen: torch.Generator) -> None:
        r = (torch.rand(shape, generator=gen) * 2 - 1) * noise
        self.register_parameter(f"residual_{name}", nn.Parameter(r))

    def _mixed(self) -> tuple[Tensor, Tensor | None]:
        W, b = self.small("weight"), self.small("bias")
        d = self.fuse_depth_coeffs
        if d is not None:
            W = official_depth_mix(W, d.coeffs_weight)
            if b is not None:
                b = official_depth_mix(b, d.coeffs_bias)
        return W, b

    def _add_residual(self, W: Tensor, b: Tensor | None) -> tuple[Tensor, Tensor | None]:
        rw, rb = getattr(self, "residual_weight", None), getattr(self, "residual_bias", None)
        if rw is not None:
            W = W + rw
        if rb is not None and b is not None:
            b = b + rb
        return W, b


class OfficialLinear(_OfficialFused):
    """``FusedLinear``: weight (out, in) and bias produced in every forward, then ``F.linear``."""

    def __init__(self, root, name, old: nn.Linear, layered, L1, w_in, w_out, residual, noise, gen):
        super().__init__()
        self._setup(root, name, layered, L1, gen)
        o1, i1 = self.small("weight").shape[:2]
        self._width("in", w_in, i1, old.in_features, gen)
        self._width("out", w_out, o1, old.out_features, gen)
        if residual:
            self._residual("weight", (old.out_features, old.in_features), noise, gen)
            if self.small("bias") is not None:
                self._residual("bias", (old.out_features,), noise, gen)

    def params(self) -> tuple[Tensor, Tensor | None]:
        W, b = self._mixed()
        E_out = self.width_out.coeffs_weight
        W = official_grow_matrix(W, E_out, self.width_in.coeffs_weight)
        b = None if b is None else official_grow_vector(b, E_out)
        return self._add_residual(W, b)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, *self.params())


class OfficialNorm(_OfficialFused):
    """``FusedLayeredNorm``: weight and bias depth-mixed (own coefficient vectors), output-expanded, applied.

    An HF RMSNorm (weight only, ``variance_epsilon``) is applied with HF's formula (the official code has none).
    """

    def __init__(self, root, name, old: nn.Module, layered, L1, w_out, residual, noise, gen):
        super().__init__()
        self._setup(root, name, layered, L1, gen)
        d2 = old.weight.shape[0]
        self.layer_norm = isinstance(old, nn.LayerNorm)
        self.eps = old.eps if self.layer_norm else old.variance_epsilon
        self._width("out", w_out, self.small("weight").shape[0], d2, gen)
        if residual:
            self._residual("weight", (d2,), noise, gen)
            if self.small("bias") is not None:
                self._residual("bias", (d2,), noise, gen)

    def params(self) -> tuple[Tensor, Tensor | None]:
        W, b = self._mixed()
        E = self.width_out.coeffs_weight
        W = official_grow_vector(W, E)
        b = None if b is None else official_grow_vector(b, E)
        return self._add_residual(W, b)

    def forward(self, x: Tensor) -> Tensor:
        W, b = self.params()
        if self.layer_norm:
            return F.layer_norm(x, (W.shape[0],), W, b, self.eps)
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return W * h.to(x.dtype)


class OfficialEmbedding(_OfficialFused):
    """``FusedEmbedding``: table (n, d2) = small table with grown feature columns, then ``F.embedding``."""

    def __init__(self, root, name, old: nn.Embedding, w_out, residual, noise, gen):
        super().__init__()
        self._setup(root, name, False, 0, gen)
        self.opts = (old.padding_idx, old.max_norm, old.norm_type, old.scale_grad_by_freq, old.sparse)
        self._width("out", w_out, self.small("weight").shape[1], old.embedding_dim, gen)
        if residual:
            self._residual("weight", (old.num_embeddings, old.embedding_dim), noise, gen)

    def params(self) -> tuple[Tensor, None]:
        W = official_grow_embedding(self.small("weight"), self.width_out.coeffs_weight)
        return self._add_residual(W, None)

    def forward(self, x: Tensor) -> Tensor:
        return F.embedding(x, self.params()[0], *self.opts)


_OFFICIAL = (OfficialLinear, OfficialNorm, OfficialEmbedding)


def _set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def official_wrap(
    large: nn.Module,
    small: nn.Module,
    *,
    tie: bool = True,
    residual: bool = False,
    residual_noise: float = 0.01,
    seed: int = 0,
) -> nn.Module:
    """Wrap ``large`` (an HF model of the large config) in place as the official ``create_ligo_from_model`` does.

    Args:
        large: fresh HF model of the large config; its Linear/norm/Embedding modules are replaced.
        small: the small HF model of the same class (its tensors are registered on ``large``; not modified).
        tie: ``fuse_tie_param``; residual / residual_noise: ``tune_residual`` / ``tune_residual_noise``.
        seed: seed of the initial coefficients (official ``rand`` scheme; benchmarks overwrite them).

    Returns:
        ``large``, whose ``state_dict()`` is the official checkpoint layout and whose trainable parameters
        are the coefficients (plus any large-model parameter the operator leaves in place, as officially).
    """
    arch = arch_for(small).for_configs(small.config, large.config)
    gen = torch.Generator().manual_seed(seed)
    L1, L2 = arch.num_layers(small.config), arch.num_layers(large.config)
    block0 = arch.layer_path(0) + "."
    sd = small.state_dict()
    for k, v in sd.items():
        if not k.startswith(arch.layers + "."):
            large.register_buffer(SM + k.replace(".", "_"), v.detach())
    layers = [small.get_submodule(arch.layer_path(j)) for j in range(L1)]
    for k, _ in layers[0].named_parameters():
        stacked = torch.stack([layer.get_parameter(k).detach() for layer in layers], -1)
        large.register_buffer(SM + k.replace(".", "_"), stacked)

    # (small, large) size of every width, read off the modules that use it
    sizes: dict[str, tuple[int, int]] = {}
    for mod, prefix in [(m, block0) for m in arch.layer_modules] + [(m, "") for m in arch.modules]:
        if mod.transposed or mod.weight != "weight" or isinstance(mod.out, tuple):
            raise NotImplementedError(f"official provider: {mod.path} (transposed/fused/bare weights) not covered")
        s, b = sd[prefix + mod.key("weight")].shape, large.get_submodule(prefix + mod.path).weight.shape
        sides = {LINEAR: ((mod.out, 0), (mod.inp, 1)), NORM: ((mod.out, 0),), EMBEDDING: ((mod.out, 1),)}
        for width, dim in sides[mod.kind]:
            if width is not None:
                sizes.setdefault(width, (s[dim], b[dim]))
    tied: dict[str, list[OfficialWidth]] = {}
    if tie:
        for name, spec in arch.widths.items():
            if name in sizes:
                tied[name] = [OfficialWidth(*sizes[name], gen) for _ in range(L2 if spec.per_layer else 1)]
                for l, w in enumerate(tied[name]):
                    _set_module(large, spec.key.format(l=l), w)

    def width(name: str | None, l: int) -> OfficialWidth | None:
        if name not in tied:
            return None
        return tied[name][l if arch.widths[name].per_layer else 0]

    todo = [(m, l, f"{arch.layer_path(l)}.{m.path}") for l in range(L2) for m in arch.layer_modules]
    todo += [(m, -1, m.path) for m in arch.modules]
    for mod, l, path in todo:
        old, layered = large.get_submodule(path), l >= 0
        res = (residual, residual_noise, gen)
        if mod.kind == LINEAR:
            new = OfficialLinear(large, mod.path, old, layered, L1, width(mod.inp, l), width(mod.out, l), *res)
        elif mod.kind == NORM:
            new = OfficialNorm(large, mod.path, old, layered, L1, width(mod.out, l), *res)
        else:
            new = OfficialEmbedding(large, mod.path, old, width(mod.out, l), *res)
        _set_module(large, path, new.to(old.weight.device))
    return large


def official_produce(model: nn.Module) -> dict[str, Tensor]:
    """Every tensor an :func:`official_wrap`-ped model produces, by HF parameter name."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, _OFFICIAL):
            W, b = m.params()
            out[f"{name}.weight"] = W
            if b is not None:
                out[f"{name}.bias"] = b
    return out


def check_official(fixtures: Path = FIXTURES) -> list[tuple[str, float, float]]:
    """The official provider against the official code's own outputs: (case, weights max abs err, logits err).

    Per fixture: wrap a fresh large HF model, load ``operator.safetensors`` strictly (so the state-dict layout
    is the official one), compare every produced tensor with ``grown.safetensors`` (the same set of names; max
    abs error < 1e-5) and the eval-mode logits on ``io.safetensors``' input ids (< 1e-4), fp32 on CPU.
    Raises AssertionError when a case is off.
    """
    from safetensors.torch import load_file

    rows = []
    cases = sorted(p for p in fixtures.iterdir() if (p / "case.json").exists())
    if not cases:
        raise AssertionError(f"no official fixtures under {fixtures}")
    for d in cases:
        spec = json.loads((d / "case.json").read_text())
        family = "Bert" if spec["kind"] == "bert" else "Roberta"
        cls, cfg = getattr(transformers, f"{family}ForMaskedLM"), getattr(transformers, f"{family}Config")
        small = cls(cfg(**spec["small_config"])).eval()
        small.load_state_dict(load_file(str(d / "small.safetensors")), strict=True)
        opts = spec["options"]
        model = official_wrap(cls(cfg(**spec["large_config"])), small, tie=opts["tie"], residual=opts["residual"])
        model.load_state_dict(load_file(str(d / "operator.safetensors")), strict=True)
        model.eval()
        grown, io = load_file(str(d / "grown.safetensors")), load_file(str(d / "io.safetensors"))
        with torch.no_grad():
            produced = official_produce(model)
            logits = model(input_ids=io["input_ids"]).logits
        if set(produced) != set(grown):
            raise AssertionError(f"{d.name}: produced names differ: {sorted(set(produced) ^ set(grown))[:5]}")
        w_err = max((produced[k] - v).abs().max().item() for k, v in grown.items())
        l_err = (logits - io["logits"]).abs().max().item()
        rows.append((d.name, w_err, l_err))
        if not (w_err < 1e-5 and l_err < 1e-4):
            raise AssertionError(f"{d.name}: official provider off: weights {w_err:.1e}, logits {l_err:.1e}")
    return rows


def run_check() -> int:
    """``--check`` of every benchmark: print the fixture comparison, 0 when it passes."""
    for name, w, lg in check_official():
        print(f"official provider vs official fixture {name}: weights max abs err {w:.1e}, logits {lg:.1e}: ok")
    return 0


# ================================================================================ shapes
@dataclass(frozen=True)
class Shape:
    """A benchmark shape: an HF class and a (small, large) pair of its configs."""

    name: str
    hf_class: str
    small: transformers.PretrainedConfig
    large: transformers.PretrainedConfig
    task: str  # what labels=input_ids trains: "masked LM" / "causal LM"

    def model(self, which: str) -> nn.Module:
        return getattr(transformers, self.hf_class)(self.small if which == "small" else self.large)

    def label(self) -> str:
        s, g = self.small, self.large
        return f"{self.name} {s.num_hidden_layers}L/{s.hidden_size}H -> {g.num_hidden_layers}L/{g.hidden_size}H"


def _bert_cfg(L: int, h: int, f: int, heads: int, vocab: int) -> transformers.BertConfig:
    return transformers.BertConfig(
        num_hidden_layers=L,
        hidden_size=h,
        intermediate_size=f,
        num_attention_heads=heads,
        vocab_size=vocab,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        tie_word_embeddings=False,  # as the official fixtures: the official code grows the decoder on its own
    )


def _llama_cfg(L: int, h: int, f: int, heads: int, kv: int, vocab: int) -> transformers.LlamaConfig:
    return transformers.LlamaConfig(
        num_hidden_layers=L,
        hidden_size=h,
        intermediate_size=f,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        vocab_size=vocab,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )


def bert_shape(quick: bool = False, vocab: int | None = None) -> Shape:
    """BERT-Base shape: 6L/512H (8 heads, FFN 2048) -> 12L/768H (12 heads, FFN 3072), vocab 30522.

    quick: 3L/256H (4 heads, FFN 1024) -> 6L/384H (6 heads, FFN 1536), vocab 2048.
    """
    if quick:
        v = vocab or 2048
        return Shape("bert", "BertForMaskedLM", _bert_cfg(3, 256, 1024, 4, v), _bert_cfg(6, 384, 1536, 6, v), "MLM")
    v = vocab or 30522
    return Shape("bert", "BertForMaskedLM", _bert_cfg(6, 512, 2048, 8, v), _bert_cfg(12, 768, 3072, 12, v), "MLM")


def llama_shape(quick: bool = False, vocab: int | None = None) -> Shape:
    """Llama 8L/512H (8 heads, 2 KV heads, SwiGLU 1408) -> 16L/1024H (16 heads, 4 KV heads, 2816), head_dim 64,
    vocab 32000. quick: 2L/256H (4 heads, 1 KV) -> 4L/512H (8 heads, 2 KV), SwiGLU 704 -> 1408, vocab 2048."""
    if quick:
        v = vocab or 2048
        small, large = _llama_cfg(2, 256, 704, 4, 1, v), _llama_cfg(4, 512, 1408, 8, 2, v)
    else:
        v = vocab or 32000
        small, large = _llama_cfg(8, 512, 1408, 8, 2, v), _llama_cfg(16, 1024, 2816, 16, 4, v)
    return Shape("llama", "LlamaForCausalLM", small, large, "causal LM")


def llama_xl_shape(quick: bool = False, vocab: int | None = None) -> Shape:
    """Llama 16L/2048H -> 32L/4096H (MHA, 16 -> 32 heads, SwiGLU 5632 -> 11008): the expansion kernels' roofline
    shape (bench_expand; never instantiated as a model). quick: the quick ``llama`` shape."""
    if quick:
        return llama_shape(True, vocab)
    v = vocab or 32000
    small, large = _llama_cfg(16, 2048, 5632, 16, 16, v), _llama_cfg(32, 4096, 11008, 32, 32, v)
    return Shape("llama-xl", "LlamaForCausalLM", small, large, "causal LM")


def lean_llama_shape(large_layers: int, small_layers: int = 4) -> Shape:
    """Lean-scaling shape: Llama d64 (4 heads, 1 KV head, SwiGLU 176) -> d128 (8 heads, 2 KV, 352), vocab 256.

    The small depth is fixed (default 4) so that the depth mix grows linearly with the large depth: a lean/eager
    ratio that grows with ``large_layers`` then shows per-layer costs of lean mode, not the mix.
    """
    small = _llama_cfg(small_layers, 64, 176, 4, 1, 256)
    large = _llama_cfg(large_layers, 128, 352, 8, 2, 256)
    return Shape(f"llama-d64-L{large_layers}", "LlamaForCausalLM", small, large, "causal LM")


SHAPES: dict[str, Callable[..., Shape]] = {"bert": bert_shape, "llama": llama_shape, "llama-xl": llama_xl_shape}


@dataclass(frozen=True)
class Kind:
    """One module kind of a shape's blocks (``count`` kinds of the same sizes); i1 = i2 = 0: a vector."""

    name: str
    L1: int
    L2: int
    o1: int
    o2: int
    i1: int = 0
    i2: int = 0
    count: int = 1


def module_kinds(shape: Shape) -> list[Kind]:
    """The block tensors the operator produces for ``shape``: matrices and vectors (biases, norm weights)."""
    s, g = shape.small, shape.large
    L1, L2, h1, h2 = s.num_hidden_layers, g.num_hidden_layers, s.hidden_size, g.hidden_size
    f1, f2 = s.intermediate_size, g.intermediate_size
    if shape.hf_class.startswith("Bert"):
        return [
            Kind("qkvo", L1, L2, h1, h2, h1, h2, count=4),
            Kind("ffn_in", L1, L2, f1, f2, h1, h2),
            Kind("ffn_out", L1, L2, h1, h2, f1, f2),
            Kind("bias_qkvo+ln", L1, L2, h1, h2, count=4 + 1 + 4),  # q,k,v,o,ffn-out biases; 2 LN weight+bias
            Kind("bias_ffn_in", L1, L2, f1, f2),
        ]

    def dims(c):
        hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        return c.num_attention_heads * hd, c.num_key_value_heads * hd

    (q1, kv1), (q2, kv2) = dims(s), dims(g)
    return [
        Kind("q", L1, L2, q1, q2, h1, h2),
        Kind("k/v", L1, L2, kv1, kv2, h1, h2, count=2),
        Kind("o", L1, L2, h1, h2, q1, q2),
        Kind("gate/up", L1, L2, f1, f2, h1, h2, count=2),
        Kind("down", L1, L2, h1, h2, f1, f2),
        Kind("norms", L1, L2, h1, h2, count=2),
    ]


# ================================================================================ timing
@dataclass(frozen=True)
class Stats:
    """Seconds: median and 20th/80th percentiles (linear interpolation) of ``n`` samples."""

    median: float
    p20: float
    p80: float
    n: int

    @classmethod
    def of(cls, xs: list[float]) -> Stats:
        s = sorted(xs)

        def q(p: float) -> float:
            k = p * (len(s) - 1)
            lo = math.floor(k)
            hi = min(lo + 1, len(s) - 1)
            return s[lo] + (s[hi] - s[lo]) * (k - lo)

        return cls(q(0.5), q(0.2), q(0.8), len(s))


class Clock:
    """Seconds per call of ``fn`` over ``n`` calls: host clock on CPU, CUDA events (then a sync) on GPU."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"

    def __call__(self, fn: Callable[[], object], n: int = 1) -> float:
        if not self.cuda:
            t = time.perf_counter()
            for _ in range(n):
                fn()
            return (time.perf_counter() - t) / n
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(n):
            fn()
        b.record()
        b.synchronize()
        return a.elapsed_time(b) / 1e3 / n


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    device,
    *,
    rounds: int,
    warmup: int = 1,
    min_sample_s: float = 0.0,
    progress: Callable[[int, int], None] | None = None,
    calibrate: bool = True,
) -> dict[str, Stats]:
    """Time every function in ``fns`` side by side: ``warmup + rounds`` rounds, one sample of each per round.

    The order rotates every round (no function always runs first or after the same one). One calibration call
    each (also a warm-up) sets how many calls a sample averages so that it lasts at least ``min_sample_s``;
    ``calibrate=False`` skips it (one call per sample: a dry run's plumbing, where every call is slow).
    """
    clock = Clock(device)
    reps = {}
    for name, fn in fns.items():
        if not calibrate:
            reps[name] = 1
            continue
        t = clock(fn)
        reps[name] = max(1, math.ceil(min_sample_s / max(t, 1e-9))) if min_sample_s > 0 else 1
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    for r in range(warmup + rounds):
        order = order[1:] + order[:1]
        for name in order:
            t = clock(fns[name], reps[name])
            if r >= warmup:
                times[name].append(t)
        if progress is not None:
            progress(r + 1, warmup + rounds)
    return {name: Stats.of(ts) for name, ts in times.items()}


# ================================================================================ peak memory (per process)
def _rss() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in bytes."""
    vals = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":")
                vals[k] = int(v.split()[0]) * 1024
    return vals["VmRSS"], vals["VmHWM"]


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux >= 4.0: reset the peak RSS to the current RSS
        return True
    except OSError:
        return False


def _peak(builder: Callable, args: tuple, device: str, threads: int) -> dict:
    dev = torch.device(device)
    base = 0
    if dev.type == "cpu":
        torch.set_num_threads(threads)
        try:  # M_MMAP_THRESHOLD = -3, M_TRIM_THRESHOLD = -1: big tensors come from mmap and go back at free
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-3, 128 * 1024)
            libc.mallopt(-1, 128 * 1024)
        except OSError:
            pass
        base, _ = _rss()
    step = builder(*args)
    for _ in range(2):
        step()
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return {"state": before, "peak": torch.cuda.max_memory_allocated(), "exact": True}
    exact = _reset_hwm()
    before, _ = _rss()
    step()
    _, hwm = _rss()
    if not exact:  # whole-process high-water mark: the build is in it too
        import resource

        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"state": before - base, "peak": hwm - base, "exact": exact}


def _peak_child(q, builder, args, device, threads) -> None:
    try:
        q.put(_peak(builder, args, device, threads))
    except Exception as e:  # noqa: BLE001 - reported to the parent, never a hang
        q.put({"error": f"{type(e).__name__}: {e}"})


def measure_peak(builder: Callable, args: tuple, device: str, threads: int = 1) -> dict:
    """Peak memory of one step of ``builder(*args)()`` in a fresh process: {"peak", "state", "exact"} bytes.

    ``builder`` (a module-level function, picklable) builds what it needs and returns the step function; it
    runs 2 warm-up steps, then the measured one. {"error": ...} when the child fails.
    """
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "transformers", "ligo_fast"])
    q = ctx.Queue()
    proc = ctx.Process(target=_peak_child, args=(q, builder, args, device, threads))
    proc.start()
    while True:
        try:
            res = q.get(timeout=5)
            break
        except queue.Empty:
            if not proc.is_alive():
                res = {"error": f"child exited with code {proc.exitcode}"}
                break
    proc.join()
    return res


# ================================================================================ reporting
def device_name(device) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu} ({os.cpu_count()} cores), {torch.get_num_threads()} torch thread(s)"


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def append_markdown(path: str | None, text: str) -> None:
    """Append ``text`` (a benchmark's tables) to ``path`` after a blank line; nothing when ``path`` is None."""
    if path:
        with open(path, "a") as f:
            f.write("\n" + text.rstrip("\n") + "\n")


def publish(lines: list[str], path: str | None) -> None:
    """Print a benchmark's markdown ``lines`` and append them to ``path`` (:func:`append_markdown`)."""
    text = "\n".join(lines)
    print(text)
    append_markdown(path, text)


def run_header(title: str, device, script: str, argv: list[str] | None) -> list[str]:
    """Markdown lines: title with UTC date, machine, versions, load average, the command."""
    try:
        import triton

        tv = triton.__version__
    except ImportError:
        tv = "n/a"
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = shlex.join(["python", f"benchmarks/{script}", *(sys.argv[1:] if argv is None else argv)])
    return [
        f"### {title}, {when}",
        "",
        f"- machine: {device_name(device)}; load average (1/5/15 min) at start: {load_average()}",
        f"- torch {torch.__version__}, transformers {transformers.__version__}, triton {tv}, "
        f"python {platform.python_version()}",
        f"- command: `{cmd}`",
    ]


def check_main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="self-check of the official provider against the official fixtures")
    ap.add_argument("--check", action="store_true", help="(the default and only action)")
    ap.parse_args(argv)
    return run_check()


if __name__ == "__main__":
    raise SystemExit(check_main())
