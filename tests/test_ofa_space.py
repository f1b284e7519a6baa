from __future__ import annotations

import random

import pytest
import torch

from tans.workers.networks.ofa_space import Arch, build_subnet, build_supernet, feature_dim, penultimate, sample_arch
from tans.zoo_schema.errors import ConfigError


def test_arch_id_round_trip_and_topology_zeroes_inactive_blocks():
    ks = [3, 5, 7, 3] * 5
    es = [3, 4, 6, 4] * 5
    arch = Arch.from_config(ks, es, [2, 3, 4, 2, 3])
    assert arch.id == "d23423-k35357357335357-e34346346434346"
    assert Arch.parse(arch.id) == arch
    topo = arch.topology()
    assert len(topo) == 45 and topo[40:] == [2, 3, 4, 2, 3]
    assert topo[2:4] == [0, 0] and topo[20 + 2 : 20 + 4] == [0, 0]  # unit 1 uses 2 of 4 slots
    assert topo[8:12] == [3, 5, 7, 3]


def test_configs_differing_only_in_inactive_slots_share_an_id():
    a = Arch.from_config([3] * 20, [3] * 20, [2] * 5)
    b = Arch.from_config([7, 7, 7, 7] * 5, [3, 3, 6, 6] * 5, [2] * 5)
    assert Arch.from_config([3, 3, 7, 7] * 5, [3, 3, 6, 6] * 5, [2] * 5) == a
    assert a != b


@pytest.mark.parametrize("bad", ["d12345-k3-e3", "d22222-k33-e33", "nonsense"])
def test_bad_arch_ids(bad):
    with pytest.raises(ConfigError):
        Arch.parse(bad)


@pytest.mark.parametrize("width", [1.0, 1.2])
def test_subnet_has_weights_of_supernet_and_right_penultimate(width):
    torch.manual_seed(0)
    supernet = build_supernet(width)
    arch = sample_arch(random.Random(3))
    net = build_subnet(supernet, arch, num_classes=7).eval()
    assert torch.equal(net.first_conv.conv.weight, supernet.first_conv.conv.weight)
    x = torch.randn(2, 3, 32, 32)
    assert net(x).shape == (2, 7)
    assert penultimate(net, x).shape == (2, feature_dim(width))
    assert len(net.blocks) == 1 + sum(arch.depths)


def test_base_weights_from_a_file_are_checked_and_stored_as_safetensors(tmp_path):
    from tans.pipeline.execution.config import load_config
    from tans.pipeline.execution.run import wanted_manifest
    from tans.workers.networks.nets import load_base_supernet
    from tans.zoo_schema.store import open_store

    torch.manual_seed(5)
    supernet = build_supernet(1.0)
    path = tmp_path / "ofa_supernet.pth"
    torch.save({"state_dict": supernet.state_dict()}, path)  # the official checkpoints' shape
    store = open_store(str(tmp_path / "zoo"))
    manifest = wanted_manifest(store, load_config(None, {"arch.base_weights": str(path)}))
    entry = manifest.base_weights
    assert entry.kind == "file" and entry.id == f"sha256:{entry.sha256[:16]}"
    assert store.exists(entry.key) and entry.key.endswith(".safetensors")
    loaded = load_base_supernet(store, 1.0, entry)
    assert torch.equal(loaded.first_conv.conv.weight, supernet.first_conv.conv.weight)
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(ConfigError, match="does not fit the OFA MobileNetV3 supernet at width 1.0"):
        wanted_manifest(store, load_config(None, {"arch.base_weights": str(wrong)}))
    with pytest.raises(ConfigError, match="cannot be read"):
        wanted_manifest(store, load_config(None, {"arch.base_weights": str(tmp_path / "missing.pth")}))


def test_flop_count_equals_ofas_count_net_flops_and_leaves_the_model_as_it_was():
    """count_flops counts without ofa's deep copy; the figures are ofa's own, to the unit."""
    import random

    import torch
    from ofa.utils.pytorch_utils import count_net_flops

    from tans.workers.networks.measure import count_flops
    from tans.workers.networks.ofa_space import build_subnet, build_supernet, sample_arch

    supernet = build_supernet(1.2)
    for seed in range(6):
        model = build_subnet(supernet, sample_arch(random.Random(seed)), num_classes=3 + seed).train()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        for size in (32, 64):
            assert count_flops(model, size) == int(count_net_flops(model, (1, 3, size, size)))
        assert model.training
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        assert not model._forward_hooks and all(not m._forward_hooks for m in model.modules())


@pytest.mark.slow
def test_evaluating_the_last_epoch_only_trains_the_same_network_and_scores_it_the_same():
    """Per-epoch evaluation does not touch the training (its BatchNorm re-estimation draws from
    its own generator and is redone from scratch each time): skipping it for all but the last
    epoch gives the same losses and the same final accuracy, with one accuracy, in less time."""
    from tans.workers.job import TrainSettings
    from tans.workers.networks.training import train

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(96, 3, 32, 32, generator=g), torch.randint(0, 3, (96,), generator=g)
    xt, yt = torch.rand(40, 3, 32, 32, generator=g), torch.randint(0, 3, (40,), generator=g)
    arch = sample_arch(random.Random(3))
    runs = {}
    for every in (True, False):
        torch.manual_seed(0)
        model = build_subnet(build_supernet(1.0), arch, num_classes=3)
        timings = {}
        runs[every] = train(
            model,
            x,
            y,
            xt,
            yt,
            TrainSettings(epochs=3, evaluate_every_epoch=every),
            torch.device("cpu"),
            seed=0,
            timings=timings,
        ) + (timings["eval"],)
    (losses, accs, every_eval), (losses_last, accs_last, last_eval) = runs[True], runs[False]
    assert losses_last == losses and len(losses) == 3
    assert len(accs) == 3 and accs_last == accs[-1:]
    assert every_eval > 0 and last_eval > 0


def test_batchnorm_recalibration_folds_a_last_single_image_into_the_batch_before():
    """65 images in batches of 64 would leave one image alone in train mode, which BatchNorm on
    a 1x1 map refuses; it joins the batch before, so the statistics cover all 65."""
    import torch
    from torch import nn

    from tans.workers.networks.training import recalibrate_bn

    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    x = torch.randn(65, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    recalibrate_bn(model, x, "cpu")
    with torch.no_grad():
        features = model[1](model[0](x))
    assert torch.allclose(model[2].running_mean, features.mean((0, 2, 3)), atol=1e-5)
