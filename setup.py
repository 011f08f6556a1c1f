"""Build ligo_fast. Install into an environment that already has torch:

    pip install -e . --no-build-isolation          # a checkout, editable
    pip install ligo_fast-*.tar.gz --no-build-isolation

The C++ extension ``ligo_fast._C`` is compiled against the torch it will run with, so torch must be importable
while building: hence ``--no-build-isolation`` (an isolated build would need torch in its build environment, and
pip would download a second, multi-GB CUDA torch just to build; ``[build-system]`` in pyproject.toml therefore does
not list torch). When torch cannot be imported here (an isolated build), building the extension fails with a message
that says so, rather than installing without it unnoticed; ``LIGO_FAST_SKIP_EXT=1`` chooses a pure-Python install
on purpose (the C++ sources ship inside the package, so ligo_fast JIT-builds the extension on first use, see
ligo_fast/extension.py, or uses the torch path).

The extension is always built for CPU; its CUDA kernels are added when torch has CUDA and nvcc is found, or when
FORCE_CUDA=1. MAX_JOBS limits the parallel compile jobs (read by ninja through torch's BuildExtension);
TORCH_CUDA_ARCH_LIST picks the GPU architectures.

Sources: ``ligo_fast/csrc`` (in a checkout a link to the top-level ``csrc/``, in an sdist a copy), built from and
installed as package data, so that the JIT build finds them in an installed package too.
"""

import os
from glob import glob

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

CSRC = os.path.join("ligo_fast", "csrc")  # setuptools wants source paths relative to setup.py's directory
# What the JIT build needs (ligo_fast/extension.py): every source and header, not the CPU emulation of the CUDA
# kernels (csrc/cuda/emu, for the tests) nor the check scripts.
PACKAGE_DATA = ["csrc/*.cpp", "csrc/*.h", "csrc/cuda/*.cpp", "csrc/cuda/*.cu", "csrc/cuda/*.h"]
NO_TORCH = (
    "ligo_fast: cannot build the C++ extension: torch is not importable in the build environment ({error}). "
    "Install with --no-build-isolation into an environment that has torch (pip install torch first), or set "
    "LIGO_FAST_SKIP_EXT=1 to install without the compiled extension (it is then JIT-built on first use)."
)


def _no_torch_build_ext(error: str) -> type:
    """A build_ext that fails with the reason: runs only when a wheel or editable install builds extensions, so an
    sdist can still be made without torch."""

    class NoTorchBuildExt(build_ext):
        def run(self):
            raise SystemExit(NO_TORCH.format(error=error))

    return NoTorchBuildExt


def _extension():
    """(ext_modules, cmdclass) for ligo_fast._C, or empty ones when skipped."""
    if os.environ.get("LIGO_FAST_SKIP_EXT", "0") == "1":
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError as e:
        return [Extension("ligo_fast._C", [])], {"build_ext": _no_torch_build_ext(str(e))}
    here = os.path.dirname(os.path.abspath(__file__))

    def found(pattern: str) -> list[str]:  # relative to here, whatever the working directory
        return [os.path.relpath(p, here) for p in sorted(glob(os.path.join(here, CSRC, pattern)))]

    sources = found("*.cpp")
    use_cuda = os.environ.get("FORCE_CUDA", "0") == "1" or (torch.version.cuda is not None and CUDA_HOME is not None)
    # -fopenmp: at::parallel_for is inline OpenMP code in the extension; without it the CPU ops run serially.
    args = {"cxx": ["-O3", "-fopenmp"]}
    kwargs = dict(extra_compile_args=args, extra_link_args=["-fopenmp"])
    if use_cuda:
        sources += found(os.path.join("cuda", "*.c*"))
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
    package_data={"ligo_fast": PACKAGE_DATA},
    python_requires=">=3.10",
    install_requires=["torch>=2.5", "transformers>=5.0", "safetensors", "tqdm", "numpy"],
    # hf: accelerate, for ligo_fast.integrations.accelerator and transformers' Trainer (ligo_fast.integrations.trainer)
    extras_require={"triton": ["triton"], "hf": ["accelerate>=1.0"], "test": ["pytest", "accelerate>=1.0"]},
    entry_points={"console_scripts": ["ligo-fast=ligo_fast.apps.cli:entry"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
