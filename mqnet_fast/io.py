"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename, so a crash
or Ctrl-C leaves either the old file or the new one, never a torn one."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def _atomic(path: str | Path, mode: str):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    with _atomic(path, "w") as f:
        f.write(text)


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")


def atomic_save_npz(path, **arrays) -> None:
    import numpy as np

    with _atomic(path, "wb") as f:
        np.savez(f, **arrays)


def atomic_torch_save(path, obj) -> None:
    import torch

    with _atomic(path, "wb") as f:
        torch.save(obj, f)


def read_json(path):
    with open(path) as f:
        return json.load(f)
