"""Build ligo_fast. Install into an environment that already has torch:

    pip install -e . --no-build-isolation

(build isolation would pull a multi-GB CUDA torch just to build).
"""

from setuptools import setup

setup(
    name="ligo_fast",
    version="0.1.0",
    description="Fast LiGO growth operators (Learning to Grow Pretrained Models) for PyTorch and Hugging Face",
    packages=["ligo_fast", "ligo_fast.arch", "ligo_fast.kernels"],
    package_dir={"ligo_fast.kernels": "kernels"},
    python_requires=">=3.10",
    install_requires=["torch>=2.5", "transformers>=5.0", "safetensors", "tqdm", "numpy"],
    extras_require={"triton": ["triton"], "test": ["pytest"]},
    entry_points={"console_scripts": ["ligo-fast=ligo_fast.cli:main"]},
)
