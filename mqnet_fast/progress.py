"""Progress bars (tqdm on stderr); quiet when disabled or when tqdm is missing."""
from __future__ import annotations


def progress_bar(iterable, *, desc: str = "", disable: bool = False, **kwargs):
    if disable:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a dependency; a bare environment still runs, without bars
        return iterable
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True, mininterval=0.5, **kwargs)
