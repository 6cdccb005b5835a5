"""Builds mqnet_fast._C: the C++ CPU kernels (csrc/cpu), plus the CUDA kernels (csrc/cuda) when they
can be used or are asked for.

Environment switches:
  MQNET_FAST_CPU_ARCH=portable  the CPU to build for. portable (the default) runs on any x86-64 CPU
                                with AVX2 and FMA (-march=x86-64-v3; a generic build elsewhere); the
                                AVX-512 and AVX2 paths of the fused MLP are chosen at run time from
                                the CPU's features (csrc/cpu/nonneg_mlp_score.cpp). native builds for
                                this machine only (the fastest local build; a wheel built so crashes
                                on an older CPU). Any other name is passed as -march on x86-64 (e.g.
                                x86-64-v4) and as -mcpu on aarch64 and ppc64le (e.g. neoverse-v2).
  MQNET_FAST_WITH_CUDA=auto     auto (the default) compiles csrc/cuda/*.cu only when a CUDA toolkit is
                                found and torch sees a GPU; 1 compiles them whenever a toolkit is found
                                (CI does, in its own step); 0 never (MQNET_FAST_FORCE_CPU=1 is the same)
  MQNET_FAST_CUDA_ARCH="9.0"    GPU architectures to build for (sets TORCH_CUDA_ARCH_LIST; default:
                                the visible GPU's, else 9.0)
  MAX_JOBS=N                    parallel compile jobs (ninja)

The compiler flags depend on the machine (platform.machine()): cxx_flags() chooses them, and
tests/test_setup_flags.py imports this file to check the choice (setup() runs only when this file
is run as a script, as pip and `python setup.py` run it). The build record `_build_info.json`
(torch, CUDA, backends, the CPU features the code needs) is written beside the built extension, in
the build output, and `mqnet_fast._library` reads it at import.
"""
import glob
import json
import os
import platform
import shutil
import subprocess

from setuptools import setup
from torch.utils import cpp_extension
import torch

ROOT = os.path.dirname(os.path.abspath(__file__))
PORTABLE_X86 = "x86-64-v3"  # AVX2 + FMA: every x86-64 server CPU since 2013-2015
# compiler macros -> /proc/cpuinfo flags: what the built code may execute without checking
X86_FEATURE_MACROS = {
    "__SSE3__": "pni", "__SSSE3__": "ssse3", "__SSE4_1__": "sse4_1", "__SSE4_2__": "sse4_2", "__POPCNT__": "popcnt",
    "__AVX__": "avx", "__AVX2__": "avx2", "__FMA__": "fma", "__F16C__": "f16c", "__BMI__": "bmi1", "__BMI2__": "bmi2",
    "__LZCNT__": "abm", "__MOVBE__": "movbe", "__AES__": "aes", "__PCLMUL__": "pclmulqdq", "__ADX__": "adx",
    "__SHA__": "sha_ni", "__GFNI__": "gfni", "__VAES__": "vaes", "__VPCLMULQDQ__": "vpclmulqdq",
    "__AVXVNNI__": "avx_vnni", "__AVX512F__": "avx512f", "__AVX512BW__": "avx512bw", "__AVX512DQ__": "avx512dq",
    "__AVX512VL__": "avx512vl", "__AVX512CD__": "avx512cd", "__AVX512VNNI__": "avx512_vnni",
    "__AVX512VBMI__": "avx512vbmi", "__AVX512VBMI2__": "avx512_vbmi2", "__AVX512BF16__": "avx512_bf16",
    "__AVX512IFMA__": "avx512ifma", "__AVX512BITALG__": "avx512_bitalg", "__AVX512VPOPCNTDQ__": "avx512_vpopcntdq",
    "__AVX512FP16__": "avx512_fp16", "__AMX_TILE__": "amx_tile", "__AMX_BF16__": "amx_bf16", "__AMX_INT8__": "amx_int8"}
# x86-64-v3 spelled out, for compilers older than GCC 11 / Clang 12 that do not know the name
X86_64_V3_FLAGS = ["-msse4.2", "-mpopcnt", "-mavx", "-mavx2", "-mfma", "-mf16c", "-mbmi", "-mbmi2", "-mlzcnt",
                   "-mmovbe"]


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _sources():
    cpp = sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True))
    cu = sorted(glob.glob(os.path.join("csrc", "**", "*.cu"), recursive=True))
    return cpp, cu


def cxx_flags(machine: str, cpu_arch: str | None = None) -> list[str]:
    """The C++ compiler flags for a machine architecture (platform.machine(): x86_64, aarch64, ...)
    and the CPU to build for (MQNET_FAST_CPU_ARCH; None or "" means portable).

    No FMA contraction: kernels must round like the PyTorch references (explicit std::fma where
    fusing is wanted); see csrc/cpu/badge_kmeanspp.cpp. -fno-trapping-math changes no result and
    lets float -> int conversions vectorize (the exp in csrc/cpu/sigmoid.h). On x86-64 a portable
    build targets x86-64-v3 (AVX2, FMA: std::fma is one instruction, not a libm call) and the
    AVX-512 MLP path is compiled with a function target attribute and chosen at run time;
    -mprefer-vector-width=512 lets a native or v4 build vectorize with 512-bit registers. GCC and
    Clang on aarch64 and ppc64le take the CPU as -mcpu and know no -mprefer-vector-width (the x86
    flags failed to build there); a portable build there names no CPU."""
    cpu = (cpu_arch or "portable").strip()
    arch = machine.lower()
    common = ["-O3", "-fopenmp"]
    rounding = ["-ffp-contract=off", "-fno-trapping-math"]
    if arch in ("x86_64", "amd64", "i386", "i686"):
        march = PORTABLE_X86 if cpu == "portable" else cpu
        return common + [f"-march={march}"] + rounding + ["-mprefer-vector-width=512"]
    if arch in ("aarch64", "arm64", "ppc64le", "ppc64"):
        return common + ([] if cpu == "portable" else [f"-mcpu={cpu}"]) + rounding
    return common + ([] if cpu in ("portable", "native") else [f"-march={cpu}"]) + rounding


def _compiler() -> str | None:
    """The C++ compiler the build uses ($CXX, else c++), if it is on PATH."""
    return shutil.which(os.environ.get("CXX", "c++"))


def required_cpu_features(flags: list[str], compiler: str | None = None) -> list[str] | None:
    """The x86 CPU features (as /proc/cpuinfo names them) that code compiled with these flags may
    use unconditionally, from the compiler's predefined macros; None where that cannot be told."""
    compiler = compiler or _compiler()
    if compiler is None or platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    try:
        done = subprocess.run([compiler, *[f for f in flags if f.startswith("-m")], "-dM", "-E", "-x", "c++",
                               os.devnull], capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    macros = {line.split()[1] for line in done.stdout.splitlines() if line.startswith("#define ")}
    return sorted(feature for macro, feature in X86_FEATURE_MACROS.items() if macro in macros)


def compiler_accepts(flags: list[str], compiler: str | None = None) -> bool:
    """Whether the C++ compiler takes these flags (True where it cannot be asked)."""
    compiler = compiler or _compiler()
    if compiler is None:
        return True
    try:
        done = subprocess.run([compiler, *flags, "-E", "-x", "c++", os.devnull], capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return True
    return done.returncode == 0


def with_cuda() -> tuple[bool, str]:
    """Whether to compile csrc/cuda/*.cu, and why."""
    choice = os.environ.get("MQNET_FAST_WITH_CUDA", "auto").strip().lower()
    if _flag("MQNET_FAST_FORCE_CPU") or choice in ("0", "false", "no", "off"):
        return False, "switched off"
    if cpp_extension.CUDA_HOME is None:
        return False, "no CUDA toolkit found"
    if choice in ("1", "true", "yes", "on"):
        return True, "asked for (MQNET_FAST_WITH_CUDA=1)"
    if choice != "auto":
        raise SystemExit(f"MQNET_FAST_WITH_CUDA must be auto, 1 or 0, got {choice!r}")
    if not torch.cuda.is_available():
        return False, "no GPU visible (MQNET_FAST_WITH_CUDA=1 compiles them anyway)"
    return True, "a GPU is visible"


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
    """The extension to build and its build record (written beside it by BuildExtension below)."""
    cpp, cu = _sources()
    cuda, why = with_cuda()
    cuda = cuda and bool(cu)
    if os.environ.get("MQNET_FAST_CUDA_ARCH"):
        os.environ["TORCH_CUDA_ARCH_LIST"] = os.environ["MQNET_FAST_CUDA_ARCH"]
    elif cuda and "TORCH_CUDA_ARCH_LIST" not in os.environ:
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
    cpu_arch = os.environ.get("MQNET_FAST_CPU_ARCH", "").strip() or "portable"
    cxx = cxx_flags(platform.machine(), cpu_arch)
    if f"-march={PORTABLE_X86}" in cxx and not compiler_accepts([f"-march={PORTABLE_X86}"]):
        march = cxx.index(f"-march={PORTABLE_X86}")
        cxx = cxx[:march] + X86_64_V3_FLAGS + cxx[march + 1:]
    backends = ["cpu"]
    kwargs = dict(name="mqnet_fast._C", include_dirs=[os.path.join(ROOT, "csrc")], extra_link_args=["-fopenmp"])
    if cuda:
        backends.append("cuda")
        ext = cpp_extension.CUDAExtension(
            sources=cpp + cu, define_macros=[("MQNET_FAST_WITH_CUDA", None)], library_dirs=_cuda_library_dirs(),
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-lineinfo", "--fmad=false"]}, **kwargs)
    else:
        ext = cpp_extension.CppExtension(sources=cpp, extra_compile_args={"cxx": cxx}, **kwargs)
    print(f"mqnet-fast: building for CPU {cpu_arch} ({' '.join(cxx)}); CUDA kernels "
          f"{'on' if cuda else 'off'}: {why}")
    ext.build_info = {
        "torch": torch.__version__.split("+")[0],
        "torch_full": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "cuda_arch": os.environ.get("TORCH_CUDA_ARCH_LIST") if cuda else None,
        "cpu_arch": cpu_arch,
        "cpu_features": required_cpu_features(cxx),
        "backends": backends,
    }
    return ext


class BuildExtension(cpp_extension.BuildExtension):
    """torch's BuildExtension (ninja) that also writes `_build_info.json` beside the built _C: into
    build/lib* (and so the wheel), and into the package folder when the extension is copied there
    (an in-place or editable build)."""

    def build_extension(self, ext):
        super().build_extension(ext)
        self._write_build_info(ext, os.path.dirname(self.get_ext_fullpath(ext.name)))

    def copy_extensions_to_source(self):
        super().copy_extensions_to_source()
        build_py = self.get_finalized_command("build_py")
        for ext in self.extensions:
            package = ".".join(ext.name.split(".")[:-1])
            self._write_build_info(ext, build_py.get_package_dir(package))

    @staticmethod
    def _write_build_info(ext, folder):
        info = getattr(ext, "build_info", None)
        if info is not None:
            with open(os.path.join(folder, "_build_info.json"), "w") as f:
                json.dump(info, f, indent=1)


if __name__ == "__main__":
    setup(
        ext_modules=[_extension()],
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    )
