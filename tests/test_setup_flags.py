"""setup.py's C++ flags per machine architecture. They were x86's on every machine: -march=native
and -mprefer-vector-width=512, which GCC for aarch64 (Grace, GH200) rejects ("unrecognized
command-line option"), so the build failed there. setup.py is imported here as a module: setup()
runs only when it is run as a script (as pip and `python setup.py` run it)."""
import importlib.util
import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
# a portable x86-64 build (the default): AVX2 + FMA, the AVX-512 paths chosen at run time
X86_FLAGS = ["-O3", "-fopenmp", "-march=x86-64-v3", "-ffp-contract=off", "-fno-trapping-math", "-mprefer-vector-width=512"]
# an OpenMP loop, so -fopenmp is exercised too
SOURCE = "int main() {\n  int s = 0;\n#pragma omp parallel for reduction(+ : s)\n  for (int i = 0; i < 8; ++i) s += i;\n  return s != 28;\n}\n"


def _library_cpu_flags():
    from mqnet_fast._library import cpu_flags

    return cpu_flags()


@pytest.fixture(scope="module")
def setup_py():
    import setuptools

    calls = []
    original, setuptools.setup = setuptools.setup, lambda **kwargs: calls.append(kwargs)
    try:
        spec = importlib.util.spec_from_file_location("mqnet_fast_setup", ROOT / "setup.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        setuptools.setup = original
    assert calls == [], "importing setup.py ran setup()"
    return module


def test_x86_64_builds_portable_unless_asked(setup_py):
    """-march=native was the default: a wheel built on an AVX-512 machine died with an illegal
    instruction on an AVX2 one. Portable (x86-64-v3) is the default now, native an opt-in."""
    for machine in ("x86_64", "AMD64"):
        assert setup_py.cxx_flags(machine) == X86_FLAGS
        assert setup_py.cxx_flags(machine, "") == X86_FLAGS
        assert setup_py.cxx_flags(machine, "portable") == X86_FLAGS
    for cpu in ("native", "x86-64-v4"):
        assert setup_py.cxx_flags("x86_64", cpu) == [f.replace("x86-64-v3", cpu) for f in X86_FLAGS]


@pytest.mark.parametrize("machine", ["aarch64", "arm64", "ppc64le"])
def test_arm_and_power_take_mcpu_and_no_x86_flag(setup_py, machine):
    portable = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-trapping-math"]
    assert setup_py.cxx_flags(machine) == portable
    for cpu in ("native", "neoverse-v2"):
        assert setup_py.cxx_flags(machine, cpu) == ["-O3", "-fopenmp", f"-mcpu={cpu}", "-ffp-contract=off",
                                                    "-fno-trapping-math"]


def test_other_machines_name_a_cpu_only_when_asked(setup_py):
    assert setup_py.cxx_flags("riscv64") == ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-trapping-math"]
    assert "-march=rv64gc" in setup_py.cxx_flags("riscv64", "rv64gc")


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 feature macros")
def test_required_cpu_features_follow_the_flags(setup_py):
    """The build record names the CPU features the code may use unconditionally; _library refuses to
    load a build whose features this CPU lacks (instead of an illegal instruction)."""
    portable = setup_py.required_cpu_features(setup_py.cxx_flags("x86_64"))
    if portable is None:
        pytest.skip("no C++ compiler on PATH")
    assert {"avx2", "fma"} <= set(portable) and not any(f.startswith("avx512") for f in portable)
    v4 = setup_py.required_cpu_features(setup_py.cxx_flags("x86_64", "x86-64-v4"))
    assert {"avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"} <= set(v4)
    # every flag named is one /proc/cpuinfo uses, so a feature this CPU lacks is found by name
    spelled = setup_py.required_cpu_features(setup_py.X86_64_V3_FLAGS)
    assert set(spelled) == set(portable), "the spelled-out x86-64-v3 flags are not x86-64-v3"
    here = _library_cpu_flags()
    if here is not None and {"avx2", "fma"} <= here:
        assert set(portable) <= here


@pytest.mark.parametrize("env, toolkit, gpu, want", [
    ({}, True, False, False), ({}, True, True, True), ({}, False, True, False),
    ({"MQNET_FAST_WITH_CUDA": "1"}, True, False, True), ({"MQNET_FAST_WITH_CUDA": "1"}, False, False, False),
    ({"MQNET_FAST_WITH_CUDA": "0"}, True, True, False), ({"MQNET_FAST_FORCE_CPU": "1"}, True, True, False)])
def test_cuda_kernels_are_built_only_when_usable_or_asked(setup_py, monkeypatch, env, toolkit, gpu, want):
    """nvcc spent minutes on the .cu kernels of CPU machines, where backend="auto" never runs them."""
    for name in ("MQNET_FAST_WITH_CUDA", "MQNET_FAST_FORCE_CPU"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(setup_py.cpp_extension, "CUDA_HOME", "/usr/local/cuda" if toolkit else None)
    monkeypatch.setattr(setup_py.torch.cuda, "is_available", lambda: gpu)
    assert setup_py.with_cuda()[0] is want


@pytest.mark.parametrize("machine, cpu_arch", [("aarch64", None), ("x86_64", None), ("aarch64", "neoverse-v2")])
def test_the_extension_is_built_with_this_machines_flags(setup_py, monkeypatch, tmp_path, machine, cpu_arch):
    """_extension() (what setup() builds) asks platform.machine() and MQNET_FAST_CPU_ARCH."""
    monkeypatch.setattr(setup_py.platform, "machine", lambda: machine)
    if cpu_arch is None:
        monkeypatch.delenv("MQNET_FAST_CPU_ARCH", raising=False)
    else:
        monkeypatch.setenv("MQNET_FAST_CPU_ARCH", cpu_arch)
    monkeypatch.setenv("MQNET_FAST_WITH_CUDA", "0")
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", os.environ.get("TORCH_CUDA_ARCH_LIST", ""))  # restored after
    monkeypatch.chdir(ROOT)
    before = sorted(p.name for p in (ROOT / "mqnet_fast").iterdir())
    ext = setup_py._extension()
    assert ext.extra_compile_args["cxx"] == setup_py.cxx_flags(machine, cpu_arch)
    assert ext.build_info["cpu_arch"] == (cpu_arch or "portable") and ext.build_info["backends"] == ["cpu"]
    # the record is written beside the built extension by build_ext, never into the source tree here
    assert sorted(p.name for p in (ROOT / "mqnet_fast").iterdir()) == before


def _compile(compiler: str, flags: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    source = tmp_path / "omp.cpp"
    source.write_text(SOURCE)
    return subprocess.run([compiler, *flags, "-c", str(source), "-o", str(tmp_path / "omp.o")],
                          capture_output=True, text=True, timeout=120)


def test_this_machines_compiler_takes_its_flags(setup_py, tmp_path):
    compiler = shutil.which(os.environ.get("CXX", "c++"))
    if compiler is None:
        pytest.skip("no C++ compiler on PATH")
    flags = setup_py.cxx_flags(platform.machine(), os.environ.get("MQNET_FAST_CPU_ARCH"))
    done = _compile(compiler, flags, tmp_path)
    assert done.returncode == 0, f"{compiler} {' '.join(flags)}:\n{done.stderr}"


def test_aarch64_cross_compiler_takes_the_aarch64_flags(setup_py, tmp_path):
    """Where GCC's aarch64 cross compiler is installed (g++-aarch64-linux-gnu): the aarch64 flags
    compile and the x86 ones do not. A cross compiler has no native CPU to detect, so the CPU is named
    (generic; GCC 12 knows Grace's Neoverse V2 only as demeter)."""
    compiler = shutil.which("aarch64-linux-gnu-g++")
    if compiler is None:
        pytest.skip("no aarch64-linux-gnu-g++ on PATH")
    done = _compile(compiler, setup_py.cxx_flags("aarch64", "generic"), tmp_path)
    assert done.returncode == 0, done.stderr
    rejected = _compile(compiler, setup_py.cxx_flags("x86_64", "generic"), tmp_path)
    assert rejected.returncode != 0 and "-mprefer-vector-width" in rejected.stderr
