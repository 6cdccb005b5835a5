"""`python -m mqnet_fast.info`: how the extension was built and which backends run here."""
import torch

from mqnet_fast import __version__
from mqnet_fast._library import LOAD_ERROR, build_info, compiled_backends


def available_backends() -> dict[str, bool]:
    compiled = compiled_backends()
    gpu = torch.cuda.is_available()
    from mqnet_fast import _triton

    triton_here = _triton.unavailable_reason(torch.device("cuda" if gpu else "cpu")) is None
    return {"torch": True, "cpp": "cpu" in compiled, "cuda": "cuda" in compiled and gpu, "triton": triton_here}


def main() -> None:
    import platform

    print(f"mqnet-fast {__version__}")
    print(f"python {platform.python_version()} on {platform.machine()}")
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), {torch.get_num_threads()} CPU threads, "
          f"GPU visible: {torch.cuda.is_available()}")
    info = build_info()
    print(f"extension built for: {info if info else 'not built'}")
    if LOAD_ERROR:
        print(f"extension load error: {LOAD_ERROR}")
    for name, ok in available_backends().items():
        print(f"  backend {name:7s} {'available' if ok else 'not available'}")
    if not torch.cuda.is_available():
        print("  (triton runs on CPU tensors only under TRITON_INTERPRET=1, as the tests do; "
              "cuda needs a visible GPU)")


if __name__ == "__main__":
    main()
