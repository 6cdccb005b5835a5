// Many SGD steps of a non-negative MLP (k -> H -> 1) under a pairwise margin ranking loss, in one
// call: the forward pass, the hand-written backward pass and torch.optim.SGD's update for every row
// of `batches`, with all state in a few small buffers. Single-threaded (a step is ~10^5 flops, so
// threads would cost more than they save) and therefore deterministic.
//
// One step on the mini-batch rows r = 0..B-1 (x_r = z[batches[step, r]], t_r its target):
//   a_r = relu(W1) x_r + b1 (H),  y_r = sigmoid(a_r),  s_r = relu(W2) . y_r + b2
//   pairs (i, j = i + B/2), i < B/2:  sgn_i = sign(t_i - t_j),  u_i = margin - sgn_i (s_i - s_j)
//   loss = sum_i max(u_i, 0) [sgn_i != 0] / max(1, #{i : sgn_i != 0})
// as the eager loop computes it with autograd (relu(W) with a straight-through gradient), then
//   g = grad + weight_decay p;  buf = g (first step) or momentum buf + g;  p = p - lr[step] buf,
// and the weights (not the biases) projected back onto W >= 0: W = max(W, 0). Projected SGD keeps
// every weight where relu(W) = W, so a weight pushed below 0 waits at 0 and can come back with the
// next gradient that points up (without the projection, a straight-through weight could drift far
// below 0 and never return in the steps it gets).
#include "cpu/common.h"
#include "cpu/sigmoid.h"

#include <algorithm>
#include <tuple>
#include <vector>

namespace mqnet_fast {
namespace {

// torch.optim.SGD's update of one parameter (momentum, weight decay, no dampening, not Nesterov),
// then, if `project`, p = max(p, 0).
template <typename T>
void sgd_update(std::vector<T>& p, const std::vector<T>& grad, std::vector<T>& buf, bool first, T lr,
                T momentum, T weight_decay, bool project) {
  const int64_t size = static_cast<int64_t>(p.size());
#pragma omp simd
  for (int64_t i = 0; i < size; ++i) {
    const T g = grad[i] + weight_decay * p[i];
    buf[i] = first ? g : momentum * buf[i] + g;
    const T updated = p[i] - lr * buf[i];
    p[i] = project ? std::max(updated, T(0)) : updated;
  }
}

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rank_train_kernel(
    const at::Tensor& z_in, const at::Tensor& targets_in, const at::Tensor& batches_in, const at::Tensor& lr_in,
    const at::Tensor& w1_in, const at::Tensor& b1_in, const at::Tensor& w2_in, const at::Tensor& b2_in,
    T momentum, T weight_decay, T margin) {
  const at::Tensor z = z_in.contiguous(), targets = targets_in.contiguous();
  const at::Tensor batches = batches_in.contiguous(), lr = lr_in.contiguous();
  const int64_t k = z.size(1), hidden = w1_in.size(0);
  const int64_t steps = batches.size(0), batch = batches.size(1), half = batch / 2;
  const T* zp = z.data_ptr<T>();
  const T* tp = targets.data_ptr<T>();
  const int64_t* rows = batches.data_ptr<int64_t>();
  const T* lrp = lr.data_ptr<T>();

  // Parameters and their momentum buffers. W1 is held transposed, [c][h], so that every loop over
  // the hidden units is contiguous and vectorizes.
  std::vector<T> w1(k * hidden), b1(hidden), w2(hidden), b2(1);
  {
    const at::Tensor w1c = w1_in.contiguous(), b1c = b1_in.contiguous();
    const at::Tensor w2c = w2_in.contiguous(), b2c = b2_in.contiguous();
    for (int64_t h = 0; h < hidden; ++h) {
      for (int64_t c = 0; c < k; ++c) w1[c * hidden + h] = w1c.data_ptr<T>()[h * k + c];
      b1[h] = b1c.data_ptr<T>()[h];
      w2[h] = w2c.data_ptr<T>()[h];
    }
    b2[0] = b2c.data_ptr<T>()[0];
  }
  std::vector<T> m_w1(w1.size()), m_b1(hidden), m_w2(hidden), m_b2(1);
  std::vector<T> g_w1(w1.size()), g_b1(hidden), g_w2(hidden), g_b2(1);
  std::vector<T> w1_pos(w1.size()), w2_pos(hidden);          // relu(W1), relu(W2)
  std::vector<T> y(batch * hidden), s(batch), g_s(batch);     // activations, scores, dloss/dscore
  std::vector<T> da(hidden);                                   // dloss/da of one row
  at::Tensor losses = at::empty({steps}, z.options());
  T* loss_out = losses.data_ptr<T>();

  for (int64_t step = 0; step < steps; ++step) {
    const int64_t* rows_now = rows + step * batch;
    for (size_t i = 0; i < w1.size(); ++i) w1_pos[i] = std::max(w1[i], T(0));
    for (int64_t h = 0; h < hidden; ++h) w2_pos[h] = std::max(w2[h], T(0));

    // Forward: a = relu(W1) x + b1, y = sigmoid(a), s = relu(W2) . y + b2.
    for (int64_t r = 0; r < batch; ++r) {
      const T* x = zp + rows_now[r] * k;
      T* yr = y.data() + r * hidden;
#pragma omp simd
      for (int64_t h = 0; h < hidden; ++h) yr[h] = w1_pos[h] * x[0];
      for (int64_t c = 1; c < k; ++c) {
        const T xc = x[c];
        const T* wc = w1_pos.data() + c * hidden;
#pragma omp simd
        for (int64_t h = 0; h < hidden; ++h) yr[h] += wc[h] * xc;
      }
      T score = 0;
#pragma omp simd reduction(+ : score)
      for (int64_t h = 0; h < hidden; ++h) {
        yr[h] = sigmoid(yr[h] + b1[h]);
        score += w2_pos[h] * yr[h];
      }
      s[r] = score + b2[0];
    }

    // Loss and its gradient wrt the scores. With N = max(1, #ordered pairs) and the pair's
    // u = margin - sgn (s_i - s_j): dloss/du = 1/N where the hinge is active and the pair ordered,
    // else 0; ds_i = -sgn du, ds_j = +sgn du. "Active" is u > 0, not u >= 0: torch's clamp(min=0)
    // backward passes no gradient at the boundary (torch 2.14.1, measured; tests check it).
    int64_t ordered = 0;
    for (int64_t i = 0; i < half; ++i) ordered += tp[rows_now[i]] - tp[rows_now[i + half]] != 0;
    const T inv_pairs = T(1) / static_cast<T>(std::max<int64_t>(ordered, 1));
    std::fill(g_s.begin(), g_s.end(), T(0));  // an odd last row is unpaired: no gradient
    T loss = 0;
    for (int64_t i = 0; i < half; ++i) {
      const T dt = tp[rows_now[i]] - tp[rows_now[i + half]];
      const T sgn = static_cast<T>((dt > 0) - (dt < 0));
      if (sgn == 0) continue;  // equal targets: no order, no cost
      const T u = margin - sgn * (s[i] - s[i + half]);
      if (u > 0) {
        loss += u;
        g_s[i] = -sgn * inv_pairs;
        g_s[i + half] = sgn * inv_pairs;
      }
    }
    loss_out[step] = loss / static_cast<T>(std::max<int64_t>(ordered, 1));

    // Backward through the two layers (the gradient wrt W is the one wrt relu(W): straight through):
    //   dW2_h = sum_r ds_r y_rh,  db2 = sum_r ds_r,
    //   da_rh = ds_r relu(W2)_h y_rh (1 - y_rh)   (sigmoid' = y (1 - y)),
    //   dW1_hc = sum_r da_rh x_rc,  db1_h = sum_r da_rh.
    // A row with ds_r = 0 (unpaired, tied or inactive) adds exact zeros, so it is skipped.
    std::fill(g_w1.begin(), g_w1.end(), T(0));
    std::fill(g_b1.begin(), g_b1.end(), T(0));
    std::fill(g_w2.begin(), g_w2.end(), T(0));
    g_b2[0] = 0;
    for (int64_t r = 0; r < batch; ++r) {
      const T ds = g_s[r];
      if (ds == 0) continue;
      const T* x = zp + rows_now[r] * k;
      const T* yr = y.data() + r * hidden;
      g_b2[0] += ds;
#pragma omp simd
      for (int64_t h = 0; h < hidden; ++h) {
        g_w2[h] += ds * yr[h];
        da[h] = ds * w2_pos[h] * (T(1) - yr[h]) * yr[h];
        g_b1[h] += da[h];
      }
      for (int64_t c = 0; c < k; ++c) {
        const T xc = x[c];
        T* gc = g_w1.data() + c * hidden;
#pragma omp simd
        for (int64_t h = 0; h < hidden; ++h) gc[h] += da[h] * xc;
      }
    }

    const bool first = step == 0;
    const T rate = lrp[step];
    sgd_update(w1, g_w1, m_w1, first, rate, momentum, weight_decay, true);
    sgd_update(b1, g_b1, m_b1, first, rate, momentum, weight_decay, false);
    sgd_update(w2, g_w2, m_w2, first, rate, momentum, weight_decay, true);
    sgd_update(b2, g_b2, m_b2, first, rate, momentum, weight_decay, false);
  }

  at::Tensor w1_out = at::empty({hidden, k}, z.options()), b1_out = at::empty({hidden}, z.options());
  at::Tensor w2_out = at::empty({1, hidden}, z.options()), b2_out = at::empty({1}, z.options());
  for (int64_t h = 0; h < hidden; ++h) {
    for (int64_t c = 0; c < k; ++c) w1_out.data_ptr<T>()[h * k + c] = w1[c * hidden + h];
    b1_out.data_ptr<T>()[h] = b1[h];
    w2_out.data_ptr<T>()[h] = w2[h];
  }
  b2_out.data_ptr<T>()[0] = b2[0];
  return {w1_out, b1_out, w2_out, b2_out, losses};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> nonneg_mlp_rank_train_cpu(
    const at::Tensor& z, const at::Tensor& targets, const at::Tensor& batches, const at::Tensor& lr,
    const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2, double momentum,
    double weight_decay, double margin) {
  check_float_matrix(z, "z");
  const int64_t n = z.size(0), k = z.size(1);
  for (const auto& [t, name] : {std::pair{&targets, "targets"}, {&lr, "lr"}, {&w1, "W1"}, {&b1, "b1"},
                                {&w2, "W2"}, {&b2, "b2"}}) {
    TORCH_CHECK(t->scalar_type() == z.scalar_type(), name, " must have z's dtype ", z.scalar_type(), ", got ",
                t->scalar_type());
    TORCH_CHECK(t->device().is_cpu(), name, " must be a CPU tensor for this kernel, got ", t->device());
  }
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == n, "targets must have shape (", n, ",), got ",
              targets.sizes());
  TORCH_CHECK(batches.dim() == 2 && batches.scalar_type() == at::kLong && batches.device().is_cpu(),
              "batches must be a 2-D int64 CPU tensor (steps, batch), got ", batches.scalar_type(), " of shape ",
              batches.sizes());
  TORCH_CHECK(lr.dim() == 1 && lr.size(0) == batches.size(0), "lr must have shape (", batches.size(0),
              ",), one rate per row of batches, got ", lr.sizes());
  TORCH_CHECK(w1.dim() == 2 && w1.size(1) == k && w1.size(0) >= 1, "W1 must have shape (H, ", k,
              ") with H >= 1, got ", w1.sizes());
  const int64_t hidden = w1.size(0);
  TORCH_CHECK(b1.dim() == 1 && b1.size(0) == hidden, "b1 must have shape (", hidden, ",), got ", b1.sizes());
  TORCH_CHECK(w2.dim() == 2 && w2.size(0) == 1 && w2.size(1) == hidden, "W2 must have shape (1, ", hidden,
              "), got ", w2.sizes());
  TORCH_CHECK(b2.dim() == 1 && b2.size(0) == 1, "b2 must have shape (1,), got ", b2.sizes());
  if (batches.numel() > 0) {
    TORCH_CHECK(batches.min().item<int64_t>() >= 0 && batches.max().item<int64_t>() < n,
                "batches holds an index out of range [0, ", n, ")");
  }
  return AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "nonneg_mlp_rank_train_cpu", [&] {
    return rank_train_kernel<scalar_t>(z, targets, batches, lr, w1, b1, w2, b2, static_cast<scalar_t>(momentum),
                                       static_cast<scalar_t>(weight_decay), static_cast<scalar_t>(margin));
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(mqnet_fast, CPU, m) { m.impl("nonneg_mlp_rank_train", &nonneg_mlp_rank_train_cpu); }

}  // namespace mqnet_fast
