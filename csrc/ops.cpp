// Schemas of every mqnet_fast op, declared once. Backends register implementations per dispatch
// key in their own files (csrc/cpu/*.cpp, csrc/cuda/*.cu); fake kernels live beside each op (mqnet_fast/ops/<op>.py).
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(mqnet_fast, m) {
  // Farthest-first traversal. x: (N, d) float32/float64; labeled: (L,) int64 initial centers;
  // excluded: (N,) bool, rows never picked. Returns picks (budget,) int64, covering radius at each
  // pick (budget,) and the final nearest-center distance of every row (N,), both in x's dtype.
  m.def("kcenter_greedy(Tensor x, Tensor labeled, int budget, Tensor excluded) -> (Tensor, Tensor, Tensor)");
  // Best key per query. metric: "cosine" (max similarity) or "l2" (min distance).
  // queries: (N, d), keys: (M, d), same float dtype. Returns values (N,) and indices (N,) int64.
  m.def("nearest(Tensor queries, Tensor keys, str metric) -> (Tensor, Tensor)");
  // The k best keys per query by dot product, best first, ties to the lower key index; with
  // exclude_self (as many queries as keys) key i is skipped for query i. queries: (N, d), keys:
  // (M, d), same float dtype; 1 <= k <= M (M - 1 with exclude_self). Returns values (N, k) and
  // indices (N, k) int64.
  m.def("nearest_k(Tensor queries, Tensor keys, int k, bool exclude_self) -> (Tensor, Tensor)");
  // Saturated facility-location gains: gain_j = sum_i max(min(s_ij, hi_i) - lo_i, 0), s_ij the dot of
  // ground row i and candidate row j, times the dot of ground2_i and candidates2_j when given.
  // ground: (n, d), candidates: (m, d), lo, hi: (n,), ground2: (n, e), candidates2: (m, e), one
  // float dtype. Returns (m,) in that dtype.
  m.def("fl_gains(Tensor ground, Tensor candidates, Tensor lo, Tensor hi, Tensor? ground2, Tensor? candidates2) "
        "-> Tensor");
  // BADGE k-means++ seeding over implicit gradient embeddings. probs: (N, C), feats: (N, d), same
  // float dtype; uniforms: (k - 1,) float64 draws in [0, 1), one per D^2-sampled pick.
  m.def("badge_kmeanspp(Tensor probs, Tensor feats, int k, Tensor uniforms) -> Tensor");
  // Non-negative MLP score: standardize, then relu(W) layers with sigmoid between, last layer
  // has one output. z: (N, k); weights[i]: (out_i, in_i) as torch.nn.Linear stores them.
  m.def("nonneg_mlp_score(Tensor z, Tensor[] weights, Tensor[] biases, Tensor? mean, Tensor? std) -> Tensor");
  // SGD on the pairwise margin ranking loss of a non-negative MLP k -> H -> 1 (relu(W) forward,
  // straight-through gradient), one step per row of batches, each followed by W = max(W, 0).
  // z: (n, k), targets: (n,), lr: (S,),
  // W1: (H, k), b1: (H,), W2: (1, H), b2: (1,), all one float dtype; batches: (S, B) int64 rows of z.
  // Returns the trained (W1, b1, W2, b2), new tensors, and the loss of each step (S,).
  m.def("nonneg_mlp_rank_train(Tensor z, Tensor targets, Tensor batches, Tensor lr, Tensor W1, Tensor b1, "
        "Tensor W2, Tensor b2, float momentum, float weight_decay, float margin) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

// An importable Python module, so that `import mqnet_fast._C` loads the registrations above.
static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
