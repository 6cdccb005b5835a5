"""Triton kernels of mqnet-fast, one module per op (`<op>_triton.py`: the kernel and its host
wrapper), used by `backend="triton"` and imported lazily by `mqnet_fast._triton`. They compile on
first use; on CPU tensors they run under `TRITON_INTERPRET=1` (how the tests check them without a GPU).
The CUDA-source kernels live in `csrc/cuda/<op>.cu` and are compiled into `mqnet_fast._C`."""
