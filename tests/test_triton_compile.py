"""Every Triton kernel compiled for sm_90 (H100/H200) ahead of time, without a GPU (marker `triton`).
The interpreter runs of test_triton.py never call Triton's GPU compiler, so what only it rejects
(a global that is not a constexpr, an op or layout it cannot lower) would first show on a GPU machine.
tests/triton_aot.py does the compiling, in a child process without TRITON_INTERPRET. Where a GPU is
visible, test_triton.py compiles and runs the kernels for real and this test is skipped."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.triton


def _ahead_of_time_api_missing() -> str | None:
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except ImportError as err:
        return f"this triton has no ahead-of-time compile API ({err})"
    return None


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: test_triton.py compiles the kernels for it")
def test_every_triton_kernel_compiles_for_sm90():
    reason = _ahead_of_time_api_missing()
    if reason:
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("triton_aot.py"))], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"tests/triton_aot.py failed:\n{done.stderr[-3000:]}"
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert results, f"tests/triton_aot.py compiled nothing:\n{done.stdout}"
    failed = [f"{r['name']}:\n{r['error']}" for r in results if r["error"] is not None]
    assert not failed, f"{len(failed)} of {len(results)} kernel variants do not compile for sm_90:\n" + "\n".join(failed)
