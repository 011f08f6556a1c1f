"""The public entry points: grow, materialize.

The top of the library: imports the model and the official-API layer, and is imported only by ``__init__``.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from . import backends
from .compat import materialize_compat
from .config import LiGOConfig, check_model_config, unknown_config_keys
from .model import LiGOModel

logger = logging.getLogger(__name__)


def grow(small_model: nn.Module, large_config, config: LiGOConfig | None = None, **overrides) -> LiGOModel:
    """Wrap a small pretrained HF model into a large one whose weights a trainable LiGO operator produces.

    Args:
        small_model: a supported HF model (``ligo_fast.supported_classes()``); never modified.
        large_config: the HF config of the large model (same family; no dimension may shrink).
        config: operator options (:class:`LiGOConfig`), used as given; None: ``LiGOConfig()``, the
            function-preserving start (``lossless`` depth and width; the official inits stay available
            by name: ``depth_init="stackbert_noisy", width_init="rand"``, or ``LiGOConfig.official()``).
            ``**overrides`` replace single fields.

    Returns:
        A :class:`LiGOModel`, called like the large HF model; its trainable parameters are the operator's.
    """
    backends.check_env()  # a bad LIGO_FAST_BACKEND fails here, not at the first forward
    check_model_config(large_config, "the large config")  # sizes: positive integers (no ZeroDivisionError later)
    for key, near in unknown_config_keys(large_config):
        hint = f" (did you mean {near!r}?)" if near else ""
        logger.warning("the large config has %r, which %s does not know%s: it changes nothing",
                       key, type(large_config).__name__, hint)  # fmt: skip
    config = config or LiGOConfig()
    return LiGOModel(small_model, large_config, config.replace(**overrides) if overrides else config)


@torch.no_grad()
def materialize(model, dtype: torch.dtype | None = None) -> nn.Module:
    """A fresh plain HF model of the large config holding the produced weights (copies, no references).

    Accepts a :class:`LiGOModel` or what :func:`ligo_fast.compat.create_ligo_from_model` returns. The result
    is in the same train/eval mode as ``model``, on its device, in ``dtype`` (None: the operator's), ready for
    ``save_pretrained``.
    """
    if isinstance(model, LiGOModel):
        return model.materialize(dtype)
    return materialize_compat(model, dtype)
