"""The public ops: one function per hot path, each dispatching to a backend, one module per op
(mqnet_fast/ops/<op>.py: its checks, its table of backends, its fake kernel for torch.compile and its
variant across processes). The backend tables are read by one resolver (mqnet_fast/ops/_backends.py).

backend: "torch" (the reference in mqnet_fast.reference, any device), "cpp" (the compiled CPU
kernel), "triton" (the Triton kernels in mqnet_fast/ops/<op>_triton.py: CUDA tensors, or CPU tensors under
TRITON_INTERPRET=1), "cuda" (the CUDA-source kernels in csrc/cuda, compiled into _C), or "auto",
which takes (each op's table, read by _backends.resolve):

- on CPU tensors "cpp" when _C is built (and registers the op: a build older than the op's source
  does not), else "torch";
- on CUDA tensors "triton" when triton imports, except for float64 input to nearest, badge_kmeanspp,
  nonneg_mlp_score and fl_gains (their Triton kernels compute in float32), which "torch" computes
  (kcenter_greedy's Triton kernel takes float64); without triton, "torch". "auto" never takes the
  "cuda" kernels: they run only when asked for by name. nonneg_mlp_score with other than one hidden
  layer goes to "torch" (the Triton kernel, asked for by name, refuses it);
- on any other device "torch";
- fl_gains has no "cuda" kernel (asked for by name it is refused);
- nonneg_mlp_rank_train has only "torch" and "cpp": its "auto" is "cpp" whenever _C is built, CUDA
  tensors included (copied to the CPU and back), else "torch";
- nearest_k has only "torch" and "cpp": on CUDA tensors "auto" runs the reference there, in blocks
  of rows.

Half-precision inputs (bfloat16, float16) are computed in float32. The references and the C++
kernels widen them first. The Triton kernels read them as stored (half the bytes) and compute in
float32, where the product of two half-precision values is exact: BADGE (its features; the
probabilities are passed in float32) and nearest's l2 path compute the float32 definition on the
rounded inputs, to float32 accumulation error; the MLP is passed float32. nearest's cosine path
rounds once more: it normalizes the rows in float32 and stores the unit rows back in the input's
half precision before the dots, so each entry moves by up to u relative (u = 2^-8 for bfloat16,
2^-11 for float16) and a value by up to 2u + u^2 (0.0078, 0.00098) from the float32 cosine of the
inputs, plus the float32 accumulation error (tests/test_triton.py checks both bounds).

torch.compile: the registered ops torch.ops.mqnet_fast.* (the C++ kernels, with fake kernels for
tracing; their own checks run inside the kernel) compile with fullgraph=True. The functions here do
not: each value check reads a tensor on the host (finite values, in every op; kcenter_greedy's
index ranges and budget; nonneg_mlp_score's std > 0, or the Triton kernel's flags word;
nonneg_mlp_rank_train's index ranges and lr >= 0), and each read is a graph break. Without
fullgraph=True they compile around the breaks and return what eager mode returns
(tests/test_nearest.py, on CPU). On CUDA the same holds for the Triton backend, whose registered ops
torch.ops.mqnet_fast_triton.nearest, .nonneg_mlp_score and .badge_kmeanspp compile whole
(tests/test_triton.py, GPU only).

Across processes: kcenter_greedy, nearest, badge_kmeanspp and top_b take `group` (a
torch.distributed process group): every rank calls them with its own shard of the pool and they run
their collective variant (mqnet_fast.distributed says what moves, and keeps the ops' names there:
kcenter_greedy, nearest, badge_kmeanspp, top_b, all_gather_rows; World is mqnet_fast.world.World).
"""
from mqnet_fast.ops._backends import BACKENDS
from mqnet_fast.ops.badge_kmeanspp import badge_kmeanspp
from mqnet_fast.ops.fl_gains import fl_gains
from mqnet_fast.ops.kcenter_greedy import KCenterResult, kcenter_greedy
from mqnet_fast.ops.nearest import METRICS, nearest
from mqnet_fast.ops.nearest_k import nearest_k
from mqnet_fast.ops.nonneg_mlp_rank_train import RankTrainResult, nonneg_mlp_rank_train
from mqnet_fast.ops.nonneg_mlp_score import nonneg_mlp_score
from mqnet_fast.ops.top_b import top_b

__all__ = ["BACKENDS", "KCenterResult", "METRICS", "RankTrainResult", "badge_kmeanspp", "fl_gains", "kcenter_greedy",
           "nearest", "nearest_k", "nonneg_mlp_rank_train", "nonneg_mlp_score", "top_b"]
