"""training/loop.py's TrainingLoop on a tiny BatchNorm network, against the arithmetic written out by
hand: `each` (a loss per micro-batch, gradients averaged), `joint` (one loss over every
micro-batch's outputs) and `run` (schedule, steps, ticks)."""
import pytest
import torch
import torch.nn.functional as F

from mqnet_fast.training.loop import TrainingLoop

CPU = torch.device("cpu")


def net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU(), torch.nn.Linear(4, 2))


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 3, generator=g), torch.randint(0, 2, (8,), generator=g)


def grads(model):
    return [p.grad.clone() for p in model.parameters()]


def test_each_averages_the_parts_and_keeps_part_0s_running_statistics():
    x, y = batch()
    model, by_hand = net(), net()
    loop = TrainingLoop(model, torch.optim.SGD(model.parameters(), lr=0.1), CPU, parts=2, divide=True, what="")
    model.train(), by_hand.train()
    reported = loop.each(lambda runner, k: (F.cross_entropy(runner(x[4 * k:4 * k + 4]), y[4 * k:4 * k + 4]),) * 2)

    losses = [F.cross_entropy(by_hand(x[:4]), y[:4])]
    kept = [b.clone() for b in by_hand.buffers()]  # after part 0's forward
    losses.append(F.cross_entropy(by_hand(x[4:]), y[4:]))
    (losses[0] / 2 + losses[1] / 2).backward()
    for got, want in zip(grads(model), grads(by_hand)):
        torch.testing.assert_close(got, want)
    for got, want in zip(model.buffers(), kept):
        assert torch.equal(got, want)
    assert [float(r) for r in reported] == pytest.approx([float(l) for l in losses])
    assert float(loop.mean(reported)) == pytest.approx(float(sum(losses)) / 2)


def test_joint_is_one_loss_over_every_parts_outputs():
    x, y = batch(2)
    model, by_hand = net(), net()
    loop = TrainingLoop(model, torch.optim.SGD(model.parameters(), lr=0.1), CPU, parts=2, divide=False, what="")
    model.train(), by_hand.train()
    loss = loop.joint(8, lambda runner, rows: (runner(x[rows]),), lambda logits: F.cross_entropy(logits, y))

    first = by_hand(x[:4])
    kept = [b.clone() for b in by_hand.buffers()]
    whole = F.cross_entropy(torch.cat([first, by_hand(x[4:])]), y)
    whole.backward()
    assert float(loss) == pytest.approx(float(whole))
    for got, want in zip(grads(model), grads(by_hand)):
        torch.testing.assert_close(got, want)
    for got, want in zip(model.buffers(), kept):
        assert torch.equal(got, want)


def test_run_follows_the_schedule_and_ticks():
    model = net()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    loop = TrainingLoop(model, optimizer, CPU, divide=True, what="")
    x, y = batch(3)
    seen = []

    def step(i):
        seen.append((i, optimizer.param_groups[0]["lr"], all(p.grad is None for p in model.parameters())))
        return loop.mean(loop.each(lambda runner, k: (F.cross_entropy(runner(x), y),) * 2))

    loop.run(6, lambda i: 0.1 * (i + 1), step, desc="", show_progress=False, steps_per_tick=3, show_loss=True)
    assert [(i, round(lr, 6), zeroed) for i, lr, zeroed in seen] == [(i, round(0.1 * (i + 1), 6), True) for i in range(6)]
    assert model.training
    with pytest.raises(ValueError, match=r"steps \(7\) must be a multiple of steps_per_tick \(3\)"):
        loop.run(7, lambda i: 0.1, step, desc="", show_progress=False, steps_per_tick=3)


def test_parts_must_be_the_world_size():
    class World:
        size, rank = 2, 0

    model = net()
    with pytest.raises(ValueError, match=r"micro_batches \(3\) must be the world size \(2\) to train here"):
        TrainingLoop(model, torch.optim.SGD(model.parameters(), lr=0.1), CPU, parts=3, world=World(), divide=True,
                     what="to train here")
