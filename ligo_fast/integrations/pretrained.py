"""Hugging Face-style loading of a saved operator: ``from_pretrained(operator_dir, small_model_or_path)``.

The counterpart of :meth:`LiGOModel.save_pretrained`. It sits above :mod:`ligo_fast.checkpoint` (it calls
:func:`ligo_fast.load_operator`) and adds what HF users expect: the small model may be given as a path or Hub id,
loaded with the class the operator was grown from (recorded in ``ligo_config.json``).
Imports: the checkpoint and serialization layers, transformers.
"""

from __future__ import annotations

import os
from pathlib import Path

import transformers
from torch import nn

from ..checkpoint import load_operator
from ..model import LiGOModel
from ..serialization import META, read_meta

__all__ = ["from_pretrained"]


def from_pretrained(path, small_model: nn.Module | str | os.PathLike, large_config=None, **small_kwargs) -> LiGOModel:
    """Rebuild the LiGOModel saved by ``save_pretrained`` / ``save_operator`` in ``path``.

    Args:
        path: the operator directory (or what :func:`ligo_fast.load_operator` accepts).
        small_model: the small HF model the operator grows, or a path / Hub id to load it from with the class named in
            the directory's ``ligo_config.json`` (``small_class``) and ``from_pretrained(small_model, **small_kwargs)``.
        large_config: the large HF config; optional when ``path`` has ``ligo_config.json``.
    """
    if not isinstance(small_model, nn.Module):
        meta = read_meta(Path(os.fspath(path)))
        if meta is None or "small_class" not in meta:
            raise ValueError(f"{path} has no {META} naming the small model's class: pass the small model itself")
        name = meta["small_class"]
        cls = getattr(transformers, name, None) if isinstance(name, str) else None
        if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
            raise ValueError(f"transformers has no model class {name!r} (small_class in {path}/{META})")
        small_model = cls.from_pretrained(small_model, **small_kwargs)
    return load_operator(path, small_model, large_config)
