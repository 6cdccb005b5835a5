"""Plain-PyTorch reference implementations of the ops: the definition the kernels are tested
against, usable on their own (any device, any float dtype), but slow and memory-hungry at pool scale."""
from mqnet_fast.reference.badge_kmeanspp import badge_kmeanspp, gradient_embedding_sqdist
from mqnet_fast.reference.fl_gains import fl_gains
from mqnet_fast.reference.kcenter_greedy import kcenter_greedy
from mqnet_fast.reference.nearest import nearest
from mqnet_fast.reference.nearest_k import nearest_k
from mqnet_fast.reference.nonneg_mlp_rank_train import nonneg_mlp_rank_train
from mqnet_fast.reference.nonneg_mlp_score import nonneg_mlp_score

__all__ = ["badge_kmeanspp", "fl_gains", "gradient_embedding_sqdist", "kcenter_greedy", "nearest", "nearest_k", "nonneg_mlp_rank_train",
           "nonneg_mlp_score"]
