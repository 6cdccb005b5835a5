"""The pieces of a training loop that the target model, the detectors and the CSI encoder share:
the precision rule, the batch order, training across processes (DistributedDataParallel with a
communication hook that sums the ranks' gradients in rank order) and the BatchNorm statistics of a
step taken in micro-batches. training/target.py and training/contrastive.py plug their steps and
losses into them."""
from __future__ import annotations

import torch


def device_autocast(device: torch.device):
    """bf16 autocast on a GPU; full precision on the CPU (the one precision rule of every trainer here)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator):
    """Endless batches of `batch_size` positions in 0..n-1, cut from consecutive random permutations
    (a batch may span two permutations; with n < batch_size a batch repeats examples). A new
    permutation is drawn as soon as the last one is used up, before the batch is handed out."""
    pending = torch.randperm(n, generator=generator)
    while True:
        while len(pending) < batch_size:
            pending = torch.cat([pending, torch.randperm(n, generator=generator)])
        batch, pending = pending[:batch_size], pending[batch_size:]
        if len(pending) == 0:
            pending = torch.randperm(n, generator=generator)
        yield batch


def distinct_batches(n: int, batch_size: int, generator: torch.Generator):
    """Endless batches of min(batch_size, n) distinct positions in 0..n-1: each shuffle is cut into
    as many whole batches as it holds and its remainder dropped (a DataLoader with drop_last), so
    no batch spans two shuffles and none holds an example twice."""
    size = min(batch_size, n)
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - size + 1, size):
            yield order[start:start + size]


def ordered_sum_hook(state, bucket):
    """DDP communication hook, registered with state (process group, divide): every rank's gradients
    gathered and summed in rank order, then (if divide) divided by W: the arithmetic of
    accumulating micro-batches 0..W-1 in one process (an all-reduce's summation order is the
    backend's)."""
    import torch.distributed as dist

    group, divide = state
    grads = bucket.buffer()
    parts = [torch.empty_like(grads) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, grads, group=group)
    total = parts[0].clone()
    for part in parts[1:]:
        total += part
    if divide:
        total.div_(len(parts))
    future = torch.futures.Future()
    future.set_result(total)
    return future


def data_parallel(module: torch.nn.Module, world, device: torch.device, *, divide: bool) -> torch.nn.Module:
    """`module` in DistributedDataParallel with ordered_sum_hook (dividing the summed gradients by W
    if `divide`). DDP's default buffer sync sends rank 0's buffers (BatchNorm's running statistics)
    to every rank at each forward."""
    from torch.nn.parallel import DistributedDataParallel

    wrapped = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    wrapped.register_comm_hook((world.group, divide), ordered_sum_hook)
    return wrapped


def parallel_module(module: torch.nn.Module, world, parts: int, device: torch.device, *, divide: bool,
                    what: str) -> tuple[torch.nn.Module, bool]:
    """(`module` wrapped for the world's W > 1 ranks (data_parallel), True), or (`module`, False) in
    one process. `parts`, the micro-batches of a step, must be W then (rank r computes part r);
    `what` ends the error message ("to train on W ranks ...")."""
    if world is None or world.size <= 1:
        return module, False
    if parts != world.size:
        raise ValueError(f"micro_batches ({parts}) must be the world size ({world.size}) {what}")
    return data_parallel(module, world, device, divide=divide), True


class Part0Buffers:
    """A step taken in micro-batches in one process updates the running statistics (BatchNorm's
    buffers) once per part; they are to follow part 0, as each rank's own part does under torchrun
    (where rank 0's are broadcast at the end, `broadcast_buffers`). `keep()` after part 0's forward,
    `restore()` after the step's backward passes (which read the buffers' versions)."""

    def __init__(self, model: torch.nn.Module, active: bool):
        self.buffers = list(model.buffers()) if active else []
        self.kept = None

    def keep(self) -> None:
        if self.buffers and self.kept is None:
            self.kept = [b.clone() for b in self.buffers]

    def restore(self) -> None:
        if self.kept is not None:
            for b, saved in zip(self.buffers, self.kept):
                b.copy_(saved)
            self.kept = None


def broadcast_buffers(model: torch.nn.Module, world) -> None:
    """Rank 0's buffers (running statistics) on every rank: each rank's last forward updated its own."""
    for b in model.buffers():
        world.broadcast_(b)
