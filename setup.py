"""Build ligo_fast. Install into an environment that already has torch:

    pip install -e . --no-build-isolation

(build isolation would pull a multi-GB CUDA torch just to build).

The C++ extension ``ligo_fast._C`` (csrc/) is always built for CPU; its CUDA kernels are added when torch has CUDA
and nvcc is found, or when FORCE_CUDA=1. LIGO_FAST_SKIP_EXT=1 skips the extension (ligo_fast then JIT-builds it
on first use, see ligo_fast/extension.py). MAX_JOBS limits the parallel compile jobs (read by ninja through
torch's BuildExtension); TORCH_CUDA_ARCH_LIST picks the GPU architectures.
"""

import os
import sys
from glob import glob

from setuptools import find_packages, setup


def _extension():
    """(ext_modules, cmdclass) for ligo_fast._C, or empty ones when skipped."""
    if os.environ.get("LIGO_FAST_SKIP_EXT", "0") == "1":
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError as e:  # torch must be installed first (--no-build-isolation)
        print(f"ligo_fast: building without the C++ extension ({e})", file=sys.stderr)
        return [], {}
    here = os.path.dirname(os.path.abspath(__file__))
    sources = [os.path.relpath(p, here) for p in sorted(glob(os.path.join(here, "csrc", "*.cpp")))]
    use_cuda = os.environ.get("FORCE_CUDA", "0") == "1" or (torch.version.cuda is not None and CUDA_HOME is not None)
    # -fopenmp: at::parallel_for is inline OpenMP code in the extension; without it the CPU ops run serially.
    args = {"cxx": ["-O3", "-fopenmp"]}
    kwargs = dict(extra_compile_args=args, extra_link_args=["-fopenmp"])
    if use_cuda:
        sources += [os.path.relpath(p, here) for p in sorted(glob(os.path.join(here, "csrc", "cuda", "*.c*")))]
        args["nvcc"] = ["-O3"]
        ext = CUDAExtension("ligo_fast._C", sources, **kwargs)
    else:
        ext = CppExtension("ligo_fast._C", sources, **kwargs)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extension()

setup(
    name="ligo_fast",
    version="0.1.0",
    description="Fast LiGO growth operators (Learning to Grow Pretrained Models) for PyTorch and Hugging Face",
    packages=find_packages(include=["ligo_fast", "ligo_fast.*"]),  # ligo_fast/kernels links to kernels/
    python_requires=">=3.10",
    install_requires=["torch>=2.5", "transformers>=5.0", "safetensors", "tqdm", "numpy"],
    # hf: accelerate, for ligo_fast.integrations.accelerator and transformers' Trainer (ligo_fast.integrations.trainer)
    extras_require={"triton": ["triton"], "hf": ["accelerate>=1.0"], "test": ["pytest", "accelerate>=1.0"]},
    entry_points={"console_scripts": ["ligo-fast=ligo_fast.apps.cli:entry"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
