"""ligo_fast: fast LiGO (Learning to Grow Pretrained Models) growth operators for PyTorch and Hugging Face."""

from .api import grow, materialize
from .arch import register_architecture, supported_classes
from .checkpoint import load_operator
from .config import LiGOConfig
from .model import LiGOModel

__version__ = "0.1.0"

__all__ = [
    "LiGOConfig",
    "LiGOModel",
    "grow",
    "materialize",
    "load_operator",
    "register_architecture",
    "supported_classes",
]
