"""This process's place in a torch.distributed job (torchrun): its rank, the group collectives run
in, its device, and the coordination the CLI, the runner and the trainers need (splitting rows
across ranks, gathering rows, one decision taken on rank 0 for all). The distributed versions of the
ops are in mqnet_fast.distributed."""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from mqnet_fast.distributed import all_gather_rows


class World:
    """This process's place in a torch.distributed job: `rank` of `size` (1 and rank 0 without a
    process group), the `group` collectives run in, and the `device` of its tensors."""

    def __init__(self, group=None, device: torch.device | None = None):
        self.group = group
        self.distributed = dist.is_available() and dist.is_initialized()
        self.size, self.rank = (dist.get_world_size(group), dist.get_rank(group)) if self.distributed else (1, 0)
        self.device = device if device is not None else torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def process_group(self):
        """The process group the ops' `group` takes (torch.distributed.group.WORLD for the default one)."""
        return self.group if self.group is not None else dist.group.WORLD

    @property
    def _main(self) -> int:
        """Rank 0 of the group, as a global rank (what collectives' src takes)."""
        return dist.get_global_rank(self.group, 0) if self.group is not None else 0

    def __repr__(self) -> str:
        return f"World(rank={self.rank}, size={self.size}, device={self.device})"

    def split_offsets(self, n: int, align: int = 1) -> list[int]:
        """Where each rank's contiguous share of n rows starts, and n last ((W + 1,) ints): boundaries
        at multiples of `align`, the blocks of `align` rows split as evenly as they go (a rank may get
        none). Computed alike on every rank, without communicating (the collective that gathers every
        rank's own count is mqnet_fast.distributed.gathered_offsets)."""
        blocks = -(-n // align)
        return [min(n, (blocks * r) // self.size * align) for r in range(self.size)] + [n]

    def broadcast_(self, t: torch.Tensor) -> torch.Tensor:
        """Overwrite `t` on every rank with rank 0's (in place)."""
        if self.size > 1:
            dist.broadcast(t, src=self._main, group=self.group)
        return t

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier(group=self.group)

    def gather_rows(self, x: torch.Tensor) -> torch.Tensor:
        """all_gather_rows in this world (x itself with one process)."""
        return x if self.size == 1 else all_gather_rows(x.to(self.device), group=self.group).to(x.device)

    def gather_in_order(self, local: torch.Tensor, owner: np.ndarray) -> torch.Tensor:
        """Rows held across the ranks, put back in the order asked: `owner` (R,) names for each row
        of the result the rank that holds it, and `local` is this rank's rows among them, in that
        order. Every rank gets all R rows."""
        got = self.gather_rows(local)  # rank order, each rank's rows in the order asked
        out = torch.empty_like(got)
        out[torch.from_numpy(np.argsort(np.asarray(owner), kind="stable")).to(got.device)] = got
        return out

    def from_main(self, compute):
        """compute() on rank 0, its result (any picklable value) sent to every rank: one decision for
        all, e.g. what a file holds while rank 0 may be writing it. An exception in compute() is
        raised on every rank (on the others a copy, without rank 0's traceback)."""
        if self.size == 1:
            return compute()
        box = [None]
        if self.is_main:
            try:
                box = [(True, compute())]
            except Exception as err:
                box = [(False, err)]
                dist.broadcast_object_list(box, src=self._main, group=self.group)
                raise
        dist.broadcast_object_list(box, src=self._main, group=self.group)
        ok, value = box[0]
        if not ok:
            raise value
        return value
