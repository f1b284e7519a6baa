"""The plain-torch networks of `tans search` compute what ofa's compute from the same weights:
the largest subnet it embeds queries with, the recalled networks' features, and the networks
its `finetune` ordering fine-tunes."""

from __future__ import annotations

import pytest
import torch

from tans.workers.networks.mbv3 import largest_subnet
from tans.workers.networks.ofa_space import build_supernet, penultimate


def _largest(supernet):
    """ofa's own largest subnet, as search built it before tans.workers.networks.mbv3."""
    supernet.set_max_net()
    return supernet.get_active_subnet(preserve_weight=True)


@pytest.mark.parametrize("width", [1.0, 1.2])
def test_features_equal_ofa_largest_subnet(width):
    torch.manual_seed(0)
    supernet = build_supernet(width)
    with torch.no_grad():  # BatchNorm that is not the identity, so its statistics matter
        for m in supernet.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    state = supernet.state_dict()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = penultimate(_largest(supernet).eval(), x)
        got = largest_subnet(state)(x)
    assert got.shape == expected.shape == (4, {1.0: 1280, 1.2: 1536}[width])
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5), (got - expected).abs().max()


def test_a_state_dict_that_is_not_a_supernet_is_refused():
    state = build_supernet(1.0).state_dict()
    del state["blocks.3.conv.point_linear.bn.bn.weight"]
    with pytest.raises(RuntimeError, match="point_linear.bn.weight"):
        largest_subnet(state)


@pytest.mark.parametrize("width,seed", [(1.0, 0), (1.0, 1), (1.2, 2)])
def test_a_static_subnet_computes_what_its_ofa_checkpoint_computes(width, seed):
    """A zoo checkpoint (ofa's get_active_subnet state dict, with tans's classifier) loaded in
    plain torch gives ofa's penultimate features: random depths, kernels and expand ratios."""
    import random

    from tans.workers.networks.mbv3 import static_subnet
    from tans.workers.networks.ofa_space import build_subnet, sample_arch

    torch.manual_seed(seed)
    arch = sample_arch(random.Random(seed))
    net = build_subnet(build_supernet(width), arch, num_classes=7).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = penultimate(net, x)
        got = static_subnet(net.state_dict(), arch.depths)(x)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5), (got - expected).abs().max()


def test_a_checkpoint_of_another_arch_is_refused():
    import random

    from tans.workers.networks.mbv3 import static_subnet
    from tans.workers.networks.ofa_space import build_subnet, sample_arch

    arch = sample_arch(random.Random(5))
    state = build_subnet(build_supernet(1.0), arch, num_classes=3).state_dict()
    other = tuple(4 if d != 4 else 2 for d in arch.depths)
    with pytest.raises(RuntimeError, match="another arch"):
        static_subnet(state, other)
    shifted = (
        (arch.depths[0] + 1, arch.depths[1] - 1, *arch.depths[2:])
        if arch.depths[1] > 2
        else (arch.depths[0] - 1, arch.depths[1] + 1, *arch.depths[2:])
    )  # same block count, split otherwise
    with pytest.raises(RuntimeError, match="another arch"):
        static_subnet(state, shifted)
    del state["final_expand_layer.conv.weight"]
    with pytest.raises(RuntimeError, match="final_expand_layer"):
        static_subnet(state, arch.depths)


@pytest.mark.parametrize("seed", [3, 4])
def test_a_static_network_fine_tunes_as_its_ofa_checkpoint_does(seed):
    """The search's fine-tune of a zoo checkpoint in plain torch (`Network`, the classifier
    included) gives ofa's logits and, after the proxy's fine-tune (train-mode BatchNorm,
    squeeze-and-excite, a new head, SGD), ofa's held-out loss: the two networks are one."""
    import copy
    import random

    from tans.retriever import proxy
    from tans.workers.networks.mbv3 import Network, static_subnet
    from tans.workers.networks.ofa_space import build_subnet, sample_arch

    torch.manual_seed(seed)
    arch = sample_arch(random.Random(seed))
    ofa_net = build_subnet(build_supernet(1.0), arch, num_classes=5).eval()
    plain = static_subnet(ofa_net.state_dict(), arch.depths, classifier=True)
    assert isinstance(plain, Network) and all(p.requires_grad for p in plain.parameters())
    x, y = torch.randn(24, 3, 32, 32), torch.arange(24) % 4
    with torch.no_grad():
        assert torch.allclose(plain(x), ofa_net(x), rtol=1e-4, atol=1e-5)
    folds = proxy.proxy_folds(y.tolist())
    losses = [proxy.fold_sum(lambda n=n: copy.deepcopy(n), 4, x, y, folds, 0, 32) for n in (ofa_net, plain)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    with pytest.raises(RuntimeError, match="classifier"):
        static_subnet({k: v for k, v in ofa_net.state_dict().items() if "classifier" not in k}, arch.depths, True)
