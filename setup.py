"""Builds mqnet_fast._C: the C++ CPU kernels, plus the CUDA kernels under kernels/ when a CUDA
toolkit is found.

Environment switches:
  MQNET_FAST_FORCE_CPU=1        build without CUDA even when CUDA_HOME is set
  MQNET_FAST_CUDA_ARCH="9.0"    GPU architectures to build for (sets TORCH_CUDA_ARCH_LIST)
  MQNET_FAST_CPU_ARCH=native    the CPU to build for (default native: this machine's), passed as
                                -march on x86-64 (e.g. x86-64-v3 for a build that must run on other
                                machines) and as -mcpu on aarch64 and ppc64le (e.g. neoverse-v2 for
                                Grace / GH200); see cxx_flags
  MAX_JOBS=N                    parallel compile jobs (ninja)

The compiler flags depend on the machine (platform.machine()): cxx_flags() chooses them, and
tests/test_setup_flags.py imports this file to check the choice (setup() runs only when this file
is run as a script, as pip and `python setup.py` run it).
"""
import glob
import json
import os
import platform

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


def cxx_flags(machine: str, cpu_arch: str | None = None) -> list[str]:
    """The C++ compiler flags for a machine architecture (platform.machine(): x86_64, aarch64, ...)
    and the CPU to build for (MQNET_FAST_CPU_ARCH; None or "" means native).

    No FMA contraction: kernels must round like the PyTorch references (explicit std::fma where
    fusing is wanted); see csrc/cpu/badge_kmeanspp.cpp. -fno-trapping-math changes no result and
    lets float -> int conversions vectorize (the exp in csrc/cpu/sigmoid.h). x86-64 takes -march and
    prefers 512-bit vectors (the AVX-512 MLP path, csrc/cpu/nonneg_mlp_score.cpp, is compiled where
    the CPU has AVX-512F); GCC and Clang on aarch64 and ppc64le take the CPU as -mcpu (which also
    tunes for it) and know no -mprefer-vector-width, so those builds failed with the x86 flags.
    Elsewhere the CPU is passed as -march only when it is named."""
    cpu = cpu_arch or "native"
    arch = machine.lower()
    common = ["-O3", "-fopenmp"]
    rounding = ["-ffp-contract=off", "-fno-trapping-math"]
    if arch in ("x86_64", "amd64", "i386", "i686"):
        return common + [f"-march={cpu}"] + rounding + ["-mprefer-vector-width=512"]
    if arch in ("aarch64", "arm64", "ppc64le", "ppc64"):
        return common + [f"-mcpu={cpu}"] + rounding
    return common + ([f"-march={cpu_arch}"] if cpu_arch else []) + rounding


def _cuda_library_dirs():
    """The folder holding libcudart.so. torch derives it from CUDA_HOME, which it may infer from an
    nvcc wrapper script (here /usr/local/bin/nvcc -> /usr/local/cuda-13.0), so look around
    (targets/sbsa-linux is where aarch64 server toolkits, as on Grace, keep it)."""
    home = cpp_extension.CUDA_HOME
    candidates = [os.path.join(home, sub) for sub in ("lib64", "lib", "targets/x86_64-linux/lib",
                                                      "targets/sbsa-linux/lib")]
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
    cpu_arch = os.environ.get("MQNET_FAST_CPU_ARCH", "").strip()
    cxx = cxx_flags(platform.machine(), cpu_arch)
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
        "cpu_arch": cpu_arch or "native",
        "backends": backends,
    }
    with open(os.path.join(ROOT, "mqnet_fast", "_build_info.json"), "w") as f:
        json.dump(info, f, indent=1)
    return ext


if __name__ == "__main__":
    setup(
        ext_modules=[_extension()],
        cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    )
