"""Networks on the meta device: copies that are independent, and the shortcuts of ShapesOnly limited to meta tensors.
(That the memory estimate through ShapesOnly is what autograd keeps on real tensors: tests/test_capacity.py.)"""
import pytest
import timm
import torch
from torch import nn

import harness.models  # noqa: F401
from harness.models.meta import ShapesOnly, Template, clone


def meta_net(name="cifar_resnet20"):
    with torch.device("meta"), ShapesOnly():
        return timm.create_model(name, num_classes=10)


def test_copies_are_equal_and_independent():
    net = meta_net()
    template = Template(net)
    assert template.pickled is not None  # the fast path was taken
    a, b = template.copy(), template.copy()
    shapes = {k: (v.shape, v.dtype, v.requires_grad, type(v)) for k, v in net.state_dict(keep_vars=True).items()}
    for copy in a, b:
        assert {k: (v.shape, v.dtype, v.requires_grad, type(v)) for k, v in copy.state_dict(keep_vars=True).items()} \
            == shapes
        assert all(t.is_meta for t in copy.parameters())
    a.requires_grad_(False).eval()
    a.set_submodule("fc", nn.Identity())
    assert all(p.requires_grad for p in b.parameters()) and b.training and isinstance(b.fc, nn.Linear)
    assert all(p.requires_grad for p in net.parameters()) and isinstance(net.fc, nn.Linear)
    assert not {id(p) for p in a.parameters()} & {id(p) for p in b.parameters()}


def test_a_network_that_cannot_be_pickled_or_holds_values_is_deep_copied():
    net = meta_net()
    net.register_forward_hook(lambda module, args, out: out)  # a local function: not picklable
    assert Template(net).pickled is None
    assert len(clone(net)._forward_hooks) == 1
    real = nn.Linear(2, 2)
    copy = clone(real)
    assert Template(real).pickled is None and torch.equal(copy.weight, real.weight) and copy.weight is not real.weight


def test_batch_norm_on_meta_is_a_scale_of_the_same_shape_and_refuses_one_value_per_channel():
    bn = nn.BatchNorm2d(4, device="meta")
    with ShapesOnly():
        assert bn(torch.empty(2, 4, 3, 3, device="meta")).shape == (2, 4, 3, 3)
        with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
            bn(torch.empty(1, 4, 1, 1, device="meta"))
        real = nn.BatchNorm2d(4)  # outside the meta device everything is computed as usual
        x = torch.randn(3, 4, 2, 2)
        assert torch.allclose(real(x), (x - x.mean((0, 2, 3), keepdim=True))
                              / (x.var((0, 2, 3), unbiased=False, keepdim=True) + 1e-5).sqrt(), atol=1e-5)
        assert torch.count_nonzero(nn.init.normal_(torch.zeros(5))) == 5


def test_initialisation_is_skipped_on_meta_only():
    with ShapesOnly():
        t = torch.empty(3, device="meta")
        assert torch.Tensor.normal_(t) is t
        assert torch.count_nonzero(torch.zeros(4).uniform_(1, 2)) == 4
