"""ligo_fast with the Hugging Face training stack (``pip install ligo_fast[hf]`` for accelerate).

* :mod:`.trainer`: :class:`GrowingModel` and :class:`GrowthCallback`, operator then large model in one ``Trainer`` run;
  :func:`latest_complete_checkpoint`, the newest Trainer checkpoint whose save finished (to resume from).
* :mod:`.pretrained`: :func:`from_pretrained`, the loader matching ``LiGOModel.save_pretrained``.
* :mod:`.accelerator`: ``ddp_kwargs`` for ``accelerate`` (``from ligo_fast.integrations.accelerator import
  ddp_kwargs``; not imported here, accelerate is optional).

A LiGOModel itself needs none of this to train under ``Trainer`` or ``accelerate``: it has the large model's call
signature, ``config``, checkpointing switches and a ``state_dict`` that Trainer checkpoints round-trip.
Not imported by ``ligo_fast`` itself: ``import ligo_fast.integrations``.
"""

from .pretrained import from_pretrained
from .trainer import GrowingModel, GrowthCallback, latest_complete_checkpoint

__all__ = ["GrowingModel", "GrowthCallback", "from_pretrained", "latest_complete_checkpoint"]
