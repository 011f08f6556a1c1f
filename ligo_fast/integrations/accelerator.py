"""Settings for training a LiGOModel under Hugging Face ``accelerate`` (DDP).

``accelerate`` wraps the model in DDP with its own defaults: buffers broadcast at every forward (with
``train_small=False``, the default, the small model's weights are buffers of the LiGOModel, so that is the small
model's size per step) and unused parameters not searched for (with ``train_small=True`` a tied small LM head gets no
gradient and DDP fails at the second step). :func:`ddp_kwargs` gives the settings :func:`ligo_fast.distributed.ddp`
uses, as a ``DistributedDataParallelKwargs`` handler for ``Accelerator(kwargs_handlers=[...])``::

    model = ligo_fast.grow(small, large_config, seed=0)   # every rank builds the same operator (seed)
    accelerator = Accelerator(kwargs_handlers=[ddp_kwargs(model)])
    model, opt, loader = accelerator.prepare(model, opt, loader)

With ``broadcast_buffers=False`` DDP broadcasts the parameters (the operator) from rank 0 at construction but not
the buffers: every rank must load the same small model (it does when each loads the same checkpoint).
Imports: :mod:`ligo_fast.distributed`, accelerate (an optional dependency: ``pip install ligo_fast[hf]``).
"""

from __future__ import annotations

from accelerate import DistributedDataParallelKwargs
from torch import nn

from ..distributed import unused_parameters

__all__ = ["ddp_kwargs"]


def ddp_kwargs(model: nn.Module, **overrides) -> DistributedDataParallelKwargs:
    """``DistributedDataParallelKwargs`` for a LiGOModel: ``find_unused_parameters`` only when production leaves a
    trainable tensor unused, buffers not broadcast at every forward; ``overrides`` replace single fields."""
    kwargs = {"find_unused_parameters": bool(unused_parameters(model)), "broadcast_buffers": False}
    return DistributedDataParallelKwargs(**{**kwargs, **overrides})
