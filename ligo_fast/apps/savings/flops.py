"""Analytic FLOP accounting of the experiment: a decoder-only LM's forward per token, a training step, producing
the large weights from the small ones (one LiGO operator forward), and an operator training step.

Counts only; imports only torch (``nn.Module`` for parameter shapes; a batch's shape for the operator's forms).
"""

from __future__ import annotations

import re

import torch
from torch import nn

GATED = ("llama", "gemma3_text")
"""Model types counted with a gated MLP (three matrices) and ``num_hidden_layers`` layers; the others: GPT-2."""


def forward_flops_per_token(config, seq_len: int) -> dict[str, int]:
    """Forward FLOPs per token of a decoder-only LM, counted per layer (1 multiply-add = 2 FLOPs).

    Per layer, with ``d`` = hidden, ``a`` = heads * head_dim (query/output width), ``k`` = kv_heads * head_dim,
    ``f`` = MLP width, ``T`` = sequence length:

    * ``qkvo``: Q ``2*d*a``, K ``2*d*k``, V ``2*d*k``, output ``2*a*d``;
    * ``attention``: scores ``Q K^T`` ``2*T*a`` and ``softmax(.) V`` ``2*T*a``: the full T x T matrix, as the
      dense kernels compute it (no discount for the causal mask);
    * ``mlp``: Llama's SwiGLU and Gemma 3's GeGLU gate + up + down ``3 * 2*d*f``; GPT-2 ``2 * 2*d*f``.

    Gemma 3's sliding-window layers are counted as full attention (exact for sequences up to the window's
    length). Once: ``head`` = ``2*d*V``. Not counted: embedding lookups, norms, RoPE, softmax and activation
    elementwise work, the loss (all O(d) or O(V) per token, < 1% here).

    Returns:
        ``{'qkvo', 'attention', 'mlp'}`` per layer, ``'layers'``, ``'head'`` and ``'total'`` per token.
    """
    if config.model_type in GATED:
        d, L, h = config.hidden_size, config.num_hidden_layers, config.num_attention_heads
        hd = getattr(config, "head_dim", None) or d // h
        a, k = h * hd, config.num_key_value_heads * hd
        f, mlp_mats = config.intermediate_size, 3
    elif config.model_type == "gpt2":
        d, L = config.n_embd, config.n_layer
        a = k = d
        f, mlp_mats = config.n_inner or 4 * d, 2
    else:
        raise ValueError(f"no FLOP count for model_type {config.model_type!r}")
    qkvo = 2 * d * a + 2 * 2 * d * k + 2 * a * d
    attention = 2 * seq_len * a + 2 * seq_len * a
    mlp = mlp_mats * 2 * d * f
    head = 2 * d * config.vocab_size
    layers = L * (qkvo + attention + mlp)
    return {"qkvo": qkvo, "attention": attention, "mlp": mlp, "layers": layers, "head": head, "total": layers + head}


def train_step_flops(config, batch_size: int, seq_len: int) -> int:
    """FLOPs of one training step: forward + backward (backward = 2 x forward) over ``batch_size * seq_len``
    tokens, i.e. ``3 * forward_flops_per_token * tokens``. Optimizer update not counted (O(params))."""
    return 3 * forward_flops_per_token(config, seq_len)["total"] * batch_size * seq_len


_LAYER_RE = re.compile(r"\.(\d+)\.")


def _split_layer(name: str) -> tuple[str, int | None]:
    m = _LAYER_RE.search(name)
    if m is None:
        return name, None
    return name[: m.start()] + ".{l}." + name[m.end() :], int(m.group(1))


def production_flops(small_model: nn.Module, large_model: nn.Module) -> int:
    """Forward FLOPs of producing every large weight from the small ones (one LiGO operator forward).

    Per large parameter of shape ``(o2, i2)`` from small ones ``(o1, i1)`` (``L1`` small layers; vectors
    have ``i = 1``), in the order depth mix -> expand dim 0 -> expand dim 1:

    * depth mix (block parameters only): ``2 * L1 * o1 * i1``;
    * new rows ``E_rows @ M``: ``2 * (o2 - o1) * o1 * i1`` (the identity part is a copy);
    * new columns ``M' @ E_cols^T``: ``2 * o2 * (i2 - i1) * i1``.

    Parameters that do not grow cost nothing; tied parameters are counted once.
    """
    small_shapes: dict[str, tuple[tuple[int, ...], int]] = {}
    for name, p in small_model.named_parameters():
        key, layer = _split_layer(name)
        shape, count = small_shapes.get(key, (tuple(p.shape), 0))
        small_shapes[key] = (shape, count + (layer is not None))
    total = 0
    for name, p in large_model.named_parameters():
        key, layer = _split_layer(name)
        if key not in small_shapes:
            raise ValueError(f"the small model has no counterpart of {name}")
        s, L1 = small_shapes[key]
        o1, i1 = s[0], (s[1] if len(s) > 1 else 1)
        o2, i2 = p.shape[0], (p.shape[1] if p.dim() > 1 else 1)
        if layer is not None:
            total += 2 * L1 * o1 * i1
        total += 2 * (o2 - o1) * o1 * i1 + 2 * o2 * (i2 - i1) * i1
    return total


def operator_step_flops(op_model, large_config, batch_size: int, seq_len: int) -> int:
    """FLOPs of one operator training step as it runs: the grown linears and embeddings in the forms the operator
    model picks for a ``batch_size x seq_len`` batch (``LiGOModel.linear_step_flops``: a factored layer costs less
    than the plain large layer, a produced one costs its production plus the plain layer), plus the attention
    scores, forward + backward, as in a plain step (``3 * attention * layers * tokens``)."""
    ids = torch.zeros(batch_size, seq_len, dtype=torch.long)
    attention = forward_flops_per_token(large_config, seq_len)["attention"] * _layers(large_config)
    return op_model.linear_step_flops(input_ids=ids) + 3 * attention * batch_size * seq_len


def _layers(config) -> int:
    return config.num_hidden_layers if config.model_type in GATED else config.n_layer
