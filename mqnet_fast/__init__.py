"""mqnet-fast: compiled-kernel accelerated open-set active learning (MQ-Net and baselines).

`mqnet_fast.ops` holds the fast ops (k-center greedy, nearest-set similarity, BADGE k-means++
seeding, fused non-negative MLP scoring); `mqnet_fast.reference` their plain-PyTorch definitions.
`mqnet_fast.select(strategy, budget, **arrays)` runs a strategy on your own model's outputs and
`mqnet_fast.MQNet` keeps MQ-Net's meta-model across your rounds (mqnet_fast.api; imported on first use);
`mqnet_fast.LabeledSet` keeps a pool's labeled rows and their IN/OOD answers between rounds.
"""
from mqnet_fast import ops, reference
from mqnet_fast._library import build_info, compiled_backends, has_compiled
from mqnet_fast.labeled import LabeledSet

__version__ = "0.1.0"
__all__ = ["LabeledSet", "MQNet", "ops", "reference", "build_info", "compiled_backends", "has_compiled", "select", "__version__"]


def __getattr__(name):
    # the loop-free API pulls in the strategies and models; `import mqnet_fast` for the ops stays light
    if name in ("select", "MQNet"):
        from mqnet_fast import api

        return getattr(api, name)
    raise AttributeError(f"module 'mqnet_fast' has no attribute {name!r}")
