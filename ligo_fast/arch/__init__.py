"""Architecture descriptions (one module per family) and the registry ``grow`` consults."""

from . import bert  # noqa: F401  (registers BERT/RoBERTa)
from .base import EMBEDDING, LINEAR, NORM, Arch, Module, Width, arch_for, register_architecture, supported_classes

__all__ = [
    "Arch",
    "Module",
    "Width",
    "LINEAR",
    "NORM",
    "EMBEDDING",
    "arch_for",
    "register_architecture",
    "supported_classes",
]
