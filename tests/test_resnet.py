"""The target model's convolution that computes a one-position output as a linear map (models/resnet.py
Conv2d): the same values and gradients as the convolution, checked in float64."""
import pytest
import torch
import torch.nn.functional as F

from mqnet_fast.models import ResNet18
from mqnet_fast.models.resnet import Conv2d


@pytest.mark.parametrize("cin, cout, k, stride, pad, size, linear", [
    (128, 128, 3, 1, 1, 1, True),   # the last stage on 8x8 images: 1x1 maps
    (64, 128, 3, 2, 1, 2, True),    # the stride-2 convolution into it: 2x2 -> 1x1
    (5, 7, 3, 2, 1, (2, 1), True),  # non-square input
    (3, 4, 5, 1, 1, 3, True),       # a 5x5 window over a 3x3 input padded by 1
    (3, 4, 5, 1, 2, 3, False),      # padded by 2: three positions
    (64, 128, 1, 2, 0, 2, False),   # the 1x1 shortcut reads one pixel of four: a convolution
    (8, 8, 3, 1, 1, 2, False),      # 2x2 -> 2x2: several positions
    (16, 16, 3, 1, 1, 8, False),
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_one_position_convolution_is_the_convolution(cin, cout, k, stride, pad, size, linear, channels_last):
    h, w = (size, size) if isinstance(size, int) else size
    torch.manual_seed(cin + k)
    conv = Conv2d(cin, cout, k, stride, pad, bias=False).double()
    x = torch.randn(6, cin, h, w, dtype=torch.float64)
    if channels_last:
        x, conv = x.contiguous(memory_format=torch.channels_last), conv.to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    calls = []
    handle = torch.nn.modules.conv.F.conv2d  # the linear path must not call the convolution
    try:
        torch.nn.modules.conv.F.conv2d = lambda *a, **kw: calls.append(1) or handle(*a, **kw)
        got = conv(x)
    finally:
        torch.nn.modules.conv.F.conv2d = handle
    assert bool(calls) != linear
    want = F.conv2d(x, conv.weight, None, stride, pad)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    grad = torch.randn_like(want)
    got_w, got_x = torch.autograd.grad(got, (conv.weight, x), grad)
    want_w, want_x = torch.autograd.grad(want, (conv.weight, x), grad)
    torch.testing.assert_close(got_w, want_w, rtol=0, atol=1e-12)
    torch.testing.assert_close(got_x, want_x, rtol=0, atol=1e-12)


def test_resnet18_on_8x8_images_matches_plain_convolutions():
    """The whole network on digits-sized images: the same logits and gradients as with nn.Conv2d."""
    torch.manual_seed(0)
    model = ResNet18(4, 1, 8).double()
    plain = ResNet18(4, 1, 8).double()
    for module in plain.modules():
        if isinstance(module, Conv2d):
            module.__class__ = torch.nn.Conv2d
    plain.load_state_dict(model.state_dict())
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    got, want = model(x), plain(x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    got.sum().backward()
    want.sum().backward()
    for (name, a), b in zip(model.named_parameters(), plain.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-11, msg=name)


def test_an_empty_batch_goes_through():
    conv = Conv2d(16, 32, 3, 1, 1, bias=False)
    assert conv(torch.zeros(0, 16, 1, 1)).shape == (0, 32, 1, 1)
