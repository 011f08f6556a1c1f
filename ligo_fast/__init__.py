"""ligo_fast: fast LiGO (Learning to Grow Pretrained Models) growth operators."""

__version__ = "0.1.0"
