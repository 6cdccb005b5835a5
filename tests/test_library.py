import subprocess
import sys

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
