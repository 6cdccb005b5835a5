"""What is computed once per run and reused every round: kept in memory for the run, and on disk
where it is expensive to make (the contrastive encoder, trained once per pool)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np


# Bumped whenever what is cached on disk would come out differently from the same inputs (a changed
# augmentation, loss or architecture), so that older entries are not reused.
DISK_VERSION = 2  # 2: entries are sealed (mqnet_fast.io.save_sealed)


def array_digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


@dataclass
class RunCache:
    """One run's cache. `dataset`, `seed` and `pool` (global train indices of the pool, sorted)
    identify what was trained on; `directory` is where disk entries go (None: memory only)."""
    dataset: str
    seed: int
    pool: np.ndarray
    directory: Path | None = None
    data_digest: str = ""         # a digest of the pool's images: a changed image misses the disk cache
    encoder_overrides: dict = field(default_factory=dict)  # EncoderConfig fields the run sets (e.g. epochs)
    show_progress: bool = True    # progress bars for what is trained here
    world: Any = None             # mqnet_fast.world.World under torchrun (the encoder trains on every rank together)
    memo: dict = field(default_factory=dict)
    models: dict = field(default_factory=dict)  # name -> sha256 of each model used (loaded or trained)

    def record_model(self, name: str, digest: str) -> None:
        """Note the sha256 of a model this run used (the run records it: which encoder it used)."""
        self.models[name] = digest

    def get(self, key, build: Callable[[], Any]) -> Any:
        """The memoized value for `key` (hashable), built once with `build()`."""
        if key not in self.memo:
            self.memo[key] = build()
        return self.memo[key]

    def disk_key(self, **config) -> str:
        """A hex key over (version, dataset, pool, its images, seed, config): equal exactly when all of them are."""
        pool_digest = hashlib.sha256(np.ascontiguousarray(self.pool, dtype=np.int64).tobytes()).hexdigest()
        text = json.dumps({"version": DISK_VERSION, "dataset": self.dataset, "pool": pool_digest,
                           "images": self.data_digest, "seed": self.seed, "config": config},
                          sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def disk_path(self, kind: str, **config) -> Path | None:
        """Where the disk entry of `kind` for `config` lives (None without a directory)."""
        if self.directory is None:
            return None
        return Path(self.directory) / kind / f"{self.disk_key(**config)}.pt"
