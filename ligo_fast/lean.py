"""Memory-lean expansion: produce the large layers' weights chunk by chunk just before they run; backward re-produces.

The eager path produces every large weight before the forward and autograd keeps them all until backward: the
operator step then needs the large model's weights *plus* what training them would. Here the blocks are split into
chunks of consecutive layers:

* a chunk's weights are produced by a forward pre-hook on its first block (one expand call per module kind for the
  whole chunk), installed on its modules (:class:`ligo_fast.binding.Binding`), and removed by a forward post-hook on
  its last block;
* while the model runs, a saved-tensors hook replaces every tensor that autograd would keep and that lives in a
  produced weight's storage (``weight``, ``weight.t()``, ...) by a small marker; backward unpacks a marker by
  producing that chunk again without gradients (cached while backward is inside that chunk) and viewing the same
  strides;
* the production's own graph keeps only the operator's tensors when the backend's ops save only their inputs (the
  C++ and Triton ops); the pure-PyTorch path saves intermediates, so there the production runs under non-reentrant
  activation checkpointing (``checkpointed=True``) and is recomputed in backward.

So about one chunk's large weights are alive at a time, in forward and in backward, and the numbers are those of the
eager path: the same production code computes the same values. Chunks of about ``sqrt(L2)`` layers keep the number of
production calls (each with a fixed cost) low while holding only a small share of the weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .binding import Binding


@dataclass(frozen=True)
class _Marker:
    chunk: int
    name: str
    size: torch.Size
    stride: tuple[int, ...]
    offset: int


def chunk_layers(L2: int, size: int) -> list[range]:
    """Consecutive chunks of ``size`` layers (the last may be shorter)."""
    size = max(1, min(size, L2))
    return [range(a, min(a + size, L2)) for a in range(0, L2, size)]


def default_chunk(L2: int) -> int:
    """Layers per chunk: about ``sqrt(L2)`` (the classic trade-off of checkpointing: few calls, a small share)."""
    return max(1, math.isqrt(L2 - 1) + 1) if L2 > 1 else 1


def _storage_key(t: Tensor) -> int | None:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensors without a plain storage (fake, sparse, ...)
        return None


@contextmanager
def lean_layers(
    large: nn.Module,
    blocks: Sequence[nn.Module],
    chunks: Sequence[range],
    produce: Callable[[range], dict[str, Tensor]],
    checkpointed: bool,
    binding: Binding,
):
    """Run ``large`` with its blocks' weights produced chunk by chunk; the caller supplies the global weights.

    Args:
        large: the large HF model whose block parameters were removed.
        blocks: its transformer blocks, in order.
        chunks: consecutive ranges of block indices covering all blocks.
        produce: ``produce(chunk)`` -> ``{parameter name in large: tensor}`` of those large layers.
        checkpointed: run the production under activation checkpointing (its ops save intermediates).
        binding: what installs a chunk's weights on its modules and removes them (:mod:`ligo_fast.binding`).
    """
    live: dict[int, tuple[int, str]] = {}  # storage pointer -> (chunk, name), only while a chunk runs
    names: dict[int, list[str]] = {}
    cache: dict[str, object] = {"chunk": None, "weights": None}

    def pre_hook(c: int):
        def hook(module, args):
            grad = torch.is_grad_enabled()
            ws = checkpoint(produce, chunks[c], use_reentrant=False) if (grad and checkpointed) else produce(chunks[c])
            names[c] = list(ws)
            for name, t in ws.items():
                key = _storage_key(t)
                if key is not None:
                    live[key] = (c, name)
            binding.install_named(large, ws)

        return hook

    def post_hook(c: int):
        def hook(module, args, output):
            binding.remove_named(large, names.pop(c, []))
            for key in [k for k, v in live.items() if v[0] == c]:
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
        if cache["chunk"] != x.chunk:
            cache["weights"] = None  # drop the previous chunk's before producing this one
            with torch.no_grad():
                cache["weights"] = produce(chunks[x.chunk])
            cache["chunk"] = x.chunk
        return cache["weights"][x.name].as_strided(x.size, x.stride, x.offset)

    handles = []
    for c, chunk in enumerate(chunks):
        handles.append(blocks[chunk.start].register_forward_pre_hook(pre_hook(c)))
        handles.append(blocks[chunk.stop - 1].register_forward_hook(post_hook(c)))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield
    finally:
        for h in handles:
            h.remove()
        for c in list(names):
            binding.remove_named(large, names.pop(c))
        live.clear()
