"""Query strategies, one file each, registered by name: `make_strategy(name, **options)` builds one,
`STRATEGIES` lists them in registration order (the CLI, the config check and the docs read it).

Every strategy is callable without the loop: build a `RoundView` from your own arrays and call
`select(view, budget)`; it returns the global indices of `budget` distinct candidates.
"""
from mqnet_fast.strategies.base import (STRATEGIES, NoOptions, RoundView, Selection, Strategy, TopScore,
                                        make_options, make_strategy, option_names, register, strategy_class,
                                        top_selection)

# Registration order is the order users see them in.
from mqnet_fast.strategies import random, conf, entropy, margin, coreset, badge, ll, mqnet, similar, lfosa, eaoa, ccal, eoal  # noqa: E402,F401
from mqnet_fast.strategies.mqnet import MQNetStrategy  # noqa: E402

__all__ = ["STRATEGIES", "MQNetStrategy", "NoOptions", "RoundView", "Selection", "Strategy", "TopScore", "make_options",
           "make_strategy", "option_names", "register", "strategy_class", "top_selection"]
