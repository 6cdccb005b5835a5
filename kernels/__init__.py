"""GPU kernels of mqnet-fast, importable as `mqnet_fast.kernels`: Triton kernels with their host
wrappers (one module per op, `*_triton.py`) and CUDA sources (`*.cu`, compiled into mqnet_fast._C)."""
