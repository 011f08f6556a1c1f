"""Architecture descriptions (one module per family) and the registry ``grow`` consults."""

from . import bert, gemma3, gpt2, llama, vit  # noqa: F401  (each registers its classes)
from .base import (
    EMBEDDING,
    LINEAR,
    NORM,
    Arch,
    Module,
    Width,
    arch_for,
    check_heads,
    register_architecture,
    supported_classes,
)

__all__ = [
    "Arch",
    "Module",
    "Width",
    "LINEAR",
    "NORM",
    "EMBEDDING",
    "arch_for",
    "check_heads",
    "register_architecture",
    "supported_classes",
]
