import subprocess
import sys

import pytest
import torch

import mqnet_fast
from mqnet_fast import _library
from testing import needs_cpp


def test_info_lists_backends():
    out = subprocess.run([sys.executable, "-m", "mqnet_fast.info"], capture_output=True, text=True, check=True).stdout
    for name in ("torch", "cpp", "cuda", "triton"):
        assert f"backend {name}" in out


@needs_cpp
def test_build_info_matches_this_torch():
    info = mqnet_fast.build_info()
    assert info["torch"] == torch.__version__.split("+")[0]
    assert "cpu" in info["backends"] and "cpu" in mqnet_fast.compiled_backends()


def test_load_error_says_what_to_do(monkeypatch):
    monkeypatch.setattr(_library, "build_info", lambda: {"torch_full": "9.9.9", "cuda": "99.0", "backends": ["cpu"]})
    import builtins
    real_import = builtins.__import__

    def failing_import(name, globals=None, locals=None, fromlist=(), level=0):
        if fromlist and "_C" in fromlist:
            raise ImportError("undefined symbol: _ZN3c10")
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", failing_import)
    lib, message = _library._load()
    assert lib is None
    assert "built for torch 9.9.9" in message and torch.__version__ in message and "pip install" in message


def test_a_build_this_cpu_cannot_run_is_not_loaded(monkeypatch):
    """A build for CPU features this CPU lacks (a native AVX-512 build on an AVX2 machine) would end
    the process with an illegal instruction at the first kernel call: it is refused by name instead."""
    monkeypatch.setattr(_library, "build_info", lambda: {"torch_full": torch.__version__, "cuda": None,
                                                         "backends": ["cpu"], "cpu_arch": "native",
                                                         "cpu_features": ["avx2", "avx512f", "fma"]})
    monkeypatch.setattr(_library, "cpu_flags", lambda: {"sse4_2", "avx", "avx2", "fma"})
    lib, message = _library._load()
    assert lib is None
    assert "built for CPUs with avx512f" in message and "MQNET_FAST_CPU_ARCH=native" in message and "pip install" in message


def test_a_build_for_another_torch_warns_at_import(monkeypatch):
    monkeypatch.setattr(_library, "build_info", lambda: {"torch_full": "2.0.0+cpu", "cuda": None, "backends": ["cpu"],
                                                         "cpu_arch": "portable", "cpu_features": []})
    if not mqnet_fast.has_compiled():
        pytest.skip("mqnet_fast._C is not built")
    with pytest.warns(RuntimeWarning, match="built against torch 2.0.0"):
        lib, message = _library._load()
    assert lib is not None and message is None


def test_cpu_flags_reads_the_flags_line(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse4_2 avx avx2 fma\n")
    assert _library.cpu_flags(str(cpuinfo)) == {"fpu", "sse4_2", "avx", "avx2", "fma"}
    assert _library.cpu_flags(str(tmp_path / "missing")) is None
