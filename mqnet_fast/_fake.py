"""Fake (meta) kernels: output shapes and dtypes of each op, so that the ops trace under torch.compile."""
import torch

from mqnet_fast._library import has_compiled


def _register():
    @torch.library.register_fake("mqnet_fast::kcenter_greedy")
    def _(x, labeled, budget, excluded):
        n = x.shape[0]
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32  # half x: float32 distances
        return (x.new_empty((budget,), dtype=torch.long), x.new_empty((budget,), dtype=dtype),
                x.new_empty((n,), dtype=dtype))

    @torch.library.register_fake("mqnet_fast::nearest")
    def _(queries, keys, metric):
        n = queries.shape[0]
        dtype = torch.float32 if queries.dtype in (torch.bfloat16, torch.float16) else queries.dtype
        return queries.new_empty((n,), dtype=dtype), queries.new_empty((n,), dtype=torch.long)

    @torch.library.register_fake("mqnet_fast::fl_gains")
    def _(ground, candidates, lo, hi, ground2, candidates2):
        return candidates.new_empty((candidates.shape[0],))

    @torch.library.register_fake("mqnet_fast::badge_kmeanspp")
    def _(probs, feats, k, uniforms):
        return probs.new_empty((k,), dtype=torch.long)

    @torch.library.register_fake("mqnet_fast::nonneg_mlp_score")
    def _(z, weights, biases, mean, std):
        return z.new_empty((z.shape[0],))

    @torch.library.register_fake("mqnet_fast::nonneg_mlp_rank_train")
    def _(z, targets, batches, lr, w1, b1, w2, b2, momentum, weight_decay, margin):
        return (z.new_empty(w1.shape), z.new_empty(b1.shape), z.new_empty(w2.shape), z.new_empty(b2.shape),
                z.new_empty((batches.shape[0],)))


if has_compiled():
    _register()
