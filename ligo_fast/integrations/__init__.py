"""ligo_fast with the Hugging Face training stack (``pip install ligo_fast[hf]`` for accelerate).

* :mod:`.trainer`: :class:`GrowingModel` and :class:`GrowthCallback`, operator then large model in one ``Trainer`` run.
* :mod:`.pretrained`: :func:`from_pretrained`, the loader matching ``LiGOModel.save_pretrained``.
* :mod:`.accelerator`: ``ddp_kwargs`` for ``accelerate`` (``from ligo_fast.integrations.accelerator import
  ddp_kwargs``; not imported here, accelerate is optional).

A LiGOModel itself needs none of this to train under ``Trainer`` or ``accelerate``: it has the large model's call
signature, ``config``, checkpointing switches and a ``state_dict`` that Trainer checkpoints round-trip.
Not imported by ``ligo_fast`` itself: ``import ligo_fast.integrations``.
"""

from .pretrained import from_pretrained
from .trainer import GrowingModel, GrowthCallback

__all__ = ["GrowingModel", "GrowthCallback", "from_pretrained"]
