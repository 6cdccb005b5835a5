"""The one training loop of the target model, the detectors and the CSI encoder (TrainingLoop):
the steps with their schedule and progress bar, a step's batch in micro-batches in one process or
one part per rank (DistributedDataParallel with a communication hook that sums the ranks' gradients
in rank order), the BatchNorm statistics of such a step, the final buffer broadcast; with the
precision rule and the batch orders they share. training/target.py plugs in the target model's and
the detectors' loss per part, training/contrastive.py the CSI encoder's loss over a whole step."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Sequence

import torch

from mqnet_fast.progress import progress_bar
from mqnet_fast.training.optim import set_lr


def device_autocast(device: torch.device):
    """bf16 autocast on a GPU; full precision on the CPU (the one precision rule of every trainer here)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@contextmanager
def head_threads(model: torch.nn.Module, device: torch.device):
    """One CPU thread while a FeatureHead trains or infers: its ops ((64, d) x (d, k) products,
    row-wise softmaxes) are too small to split, and OpenMP's fork and join per op cost more than
    the op (1,000 steps of a linear head on 256-dim CIFAR-10 embeddings: 0.3 s on one thread,
    1.4-24 s on two while the 2-core machine was shared). The thread setting is restored after."""
    from mqnet_fast.models import FeatureHead

    before = torch.get_num_threads()
    if device.type != "cpu" or not isinstance(model, FeatureHead) or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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


class TrainingLoop:
    """A model's training, step by step: `run` owns the steps (learning rate from the schedule,
    gradients zeroed, the plugged-in step, the optimizer's step, the progress bar) and ends with
    rank 0's buffers on every rank. A step sends its batch through `runner` in `parts` micro-batches
    by one of two rules: `each` (a loss per part, each part's backward on its own: the target model
    and the detectors) or `joint` (one loss over every part's outputs: the CSI encoder).

    In one process every part runs in turn, each with its own BatchNorm batch statistics, the
    running statistics following part 0 (Part0Buffers). With a `world` of W > 1 ranks, `parts` must
    be W: `module` (default `model`) is wrapped in DistributedDataParallel (data_parallel) and rank
    r computes part r; the ranks' gradients are summed in rank order, so every rank ends with what
    one process with `parts` = W computes, bit for bit on the CPU. `divide`: the summed gradients
    are divided by `parts` (a mean of per-part losses); `what` ends the error message of a `parts`
    that is not the world size."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device, *,
                 parts: int = 1, world=None, divide: bool, what: str, module: torch.nn.Module | None = None):
        self.model, self.optimizer, self.device = model, optimizer, device
        self.parts, self.divide = parts, divide
        self.runner, self.parallel = parallel_module(model if module is None else module, world, parts, device,
                                                     divide=divide, what=what)
        self.world = world if self.parallel else None
        self.mine: Sequence[int] = [world.rank] if self.parallel else range(parts)
        self.part0 = Part0Buffers(model, parts > 1 and not self.parallel)

    def run(self, steps: int, lr_at: Callable[[int], float], step: Callable[[int], torch.Tensor | None], *,
            desc: str, show_progress: bool, steps_per_tick: int = 1, show_loss: bool = False) -> None:
        """`steps` steps: step(i) computes step i's gradients (through `each` or `joint`) and returns
        its loss (or None). The bar ticks every `steps_per_tick` steps (an epoch) and, with
        `show_loss`, shows the mean loss of the tick's steps."""
        if steps % steps_per_tick:
            raise ValueError(f"steps ({steps}) must be a multiple of steps_per_tick ({steps_per_tick})")
        self.model.train()
        bar = progress_bar(range(steps // steps_per_tick), desc=desc, disable=not show_progress)
        i = 0
        for _ in bar:
            tick_loss = torch.zeros((), device=self.device) if show_loss else None
            for _ in range(steps_per_tick):
                set_lr(self.optimizer, lr_at(i))
                self.optimizer.zero_grad(set_to_none=True)
                loss = step(i)
                self.optimizer.step()
                if show_loss:
                    tick_loss += loss
                i += 1
            if show_loss and hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{float(tick_loss) / steps_per_tick:.3f}")
        if self.parallel:
            broadcast_buffers(self.model, self.world)

    def each(self, part_loss: Callable[[torch.nn.Module, int], tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        """This process's parts of a step, each with its own loss: part_loss(runner, k) -> (the loss
        to minimize, the loss to report) of part k, under device_autocast; each part's backward
        adds its gradients in part order (then divided by `parts` if `divide`). Returns the
        reported losses of this process's parts, detached (`mean` makes the step's of them)."""
        reported = []
        for k in self.mine:
            with device_autocast(self.device):
                loss, report = part_loss(self.runner, k)
            loss.backward()
            reported.append(report.detach())
            if k == 0:
                self.part0.keep()
        self.part0.restore()
        if self.divide and self.parts > 1 and not self.parallel:
            for p in self.model.parameters():
                if p.grad is not None:
                    p.grad.div_(self.parts)
        return reported

    def mean(self, reported: list[torch.Tensor]) -> torch.Tensor:
        """The mean of a step's reported part losses over every part (a gather across the ranks)."""
        if self.parts == 1:
            return reported[0]
        if self.parallel:
            return self.world.gather_rows(reported[0].view(1)).mean()
        return torch.stack(reported).mean()

    def joint(self, rows: int, forward: Callable[[torch.nn.Module, slice | torch.Tensor], tuple[torch.Tensor, ...]],
              loss_of: Callable[..., torch.Tensor]) -> torch.Tensor:
        """A step whose loss reads every part's outputs: the `rows` of the batch cut into `parts`
        (torch.tensor_split), forward(runner, positions) -> the part's outputs (tensors whose rows
        follow the positions: a tensor of them, or slice(None) for the whole batch in one part),
        under device_autocast; loss_of(*outputs of every part, concatenated
        in part order) -> the loss, whose gradients with respect to those outputs are pushed back
        through each part in turn (with a world, the outputs are gathered from the ranks and this
        rank's part is pushed back). In one part, one forward and one backward. Returns the loss,
        detached."""
        if self.parts == 1:
            with device_autocast(self.device):
                outputs = forward(self.runner, slice(None))
            loss = loss_of(*outputs)
            loss.backward()
            return loss.detach()
        pieces = torch.tensor_split(torch.arange(rows, device=self.device), self.parts)
        computed = []
        for k in self.mine:
            with device_autocast(self.device):
                computed.append(forward(self.runner, pieces[k]))
            if k == 0:
                self.part0.keep()
        if self.parallel:
            whole = [self.world.gather_rows(t.detach()) for t in computed[0]]
        else:
            whole = [torch.cat(ts) for ts in zip(*computed)]
        whole = [t.detach().requires_grad_(True) for t in whole]
        loss = loss_of(*whole)
        loss.backward()
        for k, outputs in zip(self.mine, computed):
            torch.autograd.backward(list(outputs), [t.grad[pieces[k]].to(o.dtype) for t, o in zip(whole, outputs)])
        self.part0.restore()  # after the backward passes, which read the buffers' versions
        return loss.detach()
