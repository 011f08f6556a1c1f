"""Building the large Hugging Face model without allocating the weights the operator will produce.

``empty_parameters()`` constructs a model whose parameters live on the ``meta`` device (no memory, no random
init) while its buffers (position ids, rotary frequencies) are real: LiGOModel deletes the parameters the operator
produces and materialises only the few that remain (:func:`materialize_leftovers`). ``with_layers`` gives a copy of
a config with another layer count, for estimates that must not build every layer.
Imports: torch and the HF config/model objects it is given; nothing of ligo_fast.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)


@contextmanager
def empty_parameters() -> Iterator[None]:
    """Within the context, every ``nn.Parameter`` registered on a module is moved to ``meta`` at registration."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def with_layers(config, layers: int):
    """A copy of ``config`` with ``num_hidden_layers`` (or the family's alias of it) set to ``layers``."""
    c = copy.deepcopy(config)
    c.num_hidden_layers = layers
    return c


def meta_shapes(hf_class: type, config) -> dict[str, tuple[int, ...]]:
    """``{state-dict key: shape}`` of ``hf_class(config)``, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = hf_class(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@torch.no_grad()
def materialize_leftovers(large: nn.Module, small_sd: dict[str, Tensor], device: torch.device) -> list[str]:
    """Give every parameter of ``large`` still on ``meta`` real storage on ``device``; returns their names.

    A parameter the small model has with the same name and shape (one that does not grow, such as BERT's
    vocabulary bias) takes the small model's values; any other is initialised by the HF model's own
    ``_init_weights`` of its module (zeros, with a warning, where that fails).
    """
    names = []
    for mod_name, module in large.named_modules():
        leftover = [(leaf, p) for leaf, p in module._parameters.items() if p is not None and p.device.type == "meta"]
        if not leftover:
            continue
        for leaf, p in leftover:
            module._parameters[leaf] = nn.Parameter(
                torch.zeros(p.shape, dtype=p.dtype, device=device), requires_grad=p.requires_grad
            )
        full = [(f"{mod_name}.{leaf}" if mod_name else leaf, leaf) for leaf, _ in leftover]
        if any(small_sd.get(n) is None or small_sd[n].shape != module._parameters[leaf].shape for n, leaf in full):
            try:
                large._init_weights(module)
            except Exception as e:  # noqa: BLE001 - a produced parameter the init reads is gone: keep zeros
                logger.warning("could not initialise %s with the model's own init (%s); it starts at zero", mod_name, e)
        for n, leaf in full:
            src = small_sd.get(n)
            if src is not None and src.shape == module._parameters[leaf].shape:
                module._parameters[leaf].copy_(src)
            names.append(n)
    return names
