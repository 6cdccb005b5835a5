"""Builds mqnet_fast._C: the C++ CPU kernels, plus the CUDA kernels under kernels/ when a CUDA
toolkit is found.

Environment switches:
  MQNET_FAST_FORCE_CPU=1        build without CUDA even when CUDA_HOME is set
  MQNET_FAST_CUDA_ARCH="9.0"    GPU architectures to build for (sets TORCH_CUDA_ARCH_LIST)
  MQNET_FAST_CPU_ARCH=native    value passed to -march (use e.g. x86-64-v2 for a portable build)
  MAX_JOBS=N                    parallel compile jobs (ninja)
"""
import glob
import json
import os

from setuptools import setup
from torch.utils import cpp_extension
import torch

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _sources():
    cpp = sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True))
    cu = sorted(glob.glob(os.path.join("kernels", "**", "*.cu"), recursive=True))
    return cpp, cu


def _cuda_library_dirs():
    """The folder holding libcudart.so. torch derives it from CUDA_HOME, which it may infer from an
    nvcc wrapper script (here /usr/local/bin/nvcc -> /usr/local/cuda-13.0), so look around."""
    home = cpp_extension.CUDA_HOME
    candidates = [os.path.join(home, sub) for sub in ("lib64", "lib", "targets/x86_64-linux/lib")]
    candidates += sorted(glob.glob("/usr/local/cuda*/lib64")) + sorted(glob.glob("/usr/local/cuda*/lib"))
    for folder in candidates:
        if os.path.exists(os.path.join(folder, "libcudart.so")):
            return [folder]
    return []


def _extension():
    cpp, cu = _sources()
    with_cuda = cpp_extension.CUDA_HOME is not None and not _flag("MQNET_FAST_FORCE_CPU")
    if os.environ.get("MQNET_FAST_CUDA_ARCH"):
        os.environ["TORCH_CUDA_ARCH_LIST"] = os.environ["MQNET_FAST_CUDA_ARCH"]
    elif with_cuda and "TORCH_CUDA_ARCH_LIST" not in os.environ:
        os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"  # no GPU is needed to pick this
    march = os.environ.get("MQNET_FAST_CPU_ARCH", "native")
    # No FMA contraction: kernels must round like the PyTorch references (explicit std::fma where
    # fusing is wanted); see csrc/cpu/badge_kmeanspp.cpp. -fno-trapping-math changes no result and
    # lets float -> int conversions vectorize (the exp in csrc/cpu/sigmoid.h).
    cxx = ["-O3", "-fopenmp", f"-march={march}", "-ffp-contract=off", "-fno-trapping-math",
           "-mprefer-vector-width=512"]
    backends = ["cpu"]
    macros = []
    kwargs = dict(name="mqnet_fast._C", include_dirs=[os.path.join(ROOT, "csrc")],
                  extra_link_args=["-fopenmp"])
    if with_cuda and cu:
        backends.append("cuda")
        macros.append(("MQNET_FAST_WITH_CUDA", None))
        ext = cpp_extension.CUDAExtension(
            sources=cpp + cu, define_macros=macros, library_dirs=_cuda_library_dirs(),
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-lineinfo", "--fmad=false"]},
            **kwargs)
    else:
        ext = cpp_extension.CppExtension(sources=cpp, define_macros=macros,
                                         extra_compile_args={"cxx": cxx}, **kwargs)
    info = {
        "torch": torch.__version__.split("+")[0],
        "torch_full": torch.__version__,
        "cuda": torch.version.cuda if "cuda" in backends else None,
        "cuda_arch": os.environ.get("TORCH_CUDA_ARCH_LIST") if "cuda" in backends else None,
        "cpu_arch": march,
        "backends": backends,
    }
    with open(os.path.join(ROOT, "mqnet_fast", "_build_info.json"), "w") as f:
        json.dump(info, f, indent=1)
    return ext


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
