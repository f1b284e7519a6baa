"""OFA MobileNetV3 subnets in plain torch, for the search's features and short fine-tunes.

`tans search` embeds the query's images with the base supernet's largest subnet, its
re-rankers compute each recalled zoo network's penultimate features, and its `finetune`
ordering fine-tunes recalled networks (`Network`: the subnet with its classifier). Building them with the
`ofa` package means building its whole supernet and extracting the subnet (and, imported
plainly rather than through `ofa_space.ofa_module`, ofa pulls in torchvision and
torch._dynamo: 1.6 s of a search). This module builds the same networks from state dicts
alone (the same layers, parameter names and arithmetic, up to float rounding, as ofa's static MobileNetV3;
`tests/test_mbv3.py` checks the features against ofa's own): the largest subnet from a
supernet's state dict, and any subnet from the state dict ofa's `get_active_subnet` gives (a
zoo checkpoint): built from a checkpoint in about half the time ofa takes. The zoo's jobs and
sub-network extraction still use ofa.
"""

from __future__ import annotations

import re
from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

# The OFA MobileNetV3 space (ofa's OFAMobileNetV3): per stage, the first block's stride and the
# activation (squeeze-and-excite is read from the weights). Stage 0 is the single first block.
STAGE_STRIDES = (1, 2, 2, 2, 1, 2)
STAGE_ACTS = ("relu", "relu", "relu", "h_swish", "h_swish", "h_swish")


class HSwish(nn.Module):
    def forward(self, x):
        return x * F.relu6(x + 3.0) / 6.0


class HSigmoid(nn.Module):
    def forward(self, x):
        return F.relu6(x + 3.0) / 6.0


def _act(name: str) -> nn.Module:
    return nn.ReLU() if name == "relu" else HSwish()


def _conv(weight: torch.Tensor, stride: int = 1, groups: int = 1, bn: bool = True, act: str | None = None):
    """conv (same padding, no bias) [+ BatchNorm] [+ activation], named as ofa names them."""
    out_c, in_per_group, k, _ = weight.shape
    layers = [("conv", nn.Conv2d(in_per_group * groups, out_c, k, stride, k // 2, groups=groups, bias=False))]
    if bn:
        layers.append(("bn", nn.BatchNorm2d(out_c)))
    if act:
        layers.append(("act", _act(act)))
    return nn.Sequential(OrderedDict(layers))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, mid: int):
        super().__init__()
        self.fc = nn.Sequential(
            OrderedDict(
                [
                    ("reduce", nn.Conv2d(channels, mid, 1)),
                    ("relu", nn.ReLU()),
                    ("expand", nn.Conv2d(mid, channels, 1)),
                    ("h_sigmoid", HSigmoid()),
                ]
            )
        )

    def forward(self, x):
        return x * self.fc(x.mean((2, 3), keepdim=True))


class MBConv(nn.Module):
    def __init__(self, state: dict, prefix: str, stride: int, act: str):
        super().__init__()
        expand = state.get(f"{prefix}inverted_bottleneck.conv.weight")
        self.inverted_bottleneck = _conv(expand, act=act) if expand is not None else None
        depth = state[f"{prefix}depth_conv.conv.weight"]
        mid = depth.shape[0]
        self.depth_conv = _conv(depth, stride, groups=mid, act=act)
        if f"{prefix}depth_conv.se.fc.reduce.weight" in state:
            self.depth_conv.add_module(
                "se", SqueezeExcite(mid, state[f"{prefix}depth_conv.se.fc.reduce.weight"].shape[0])
            )
        self.point_linear = _conv(state[f"{prefix}point_linear.conv.weight"])

    def forward(self, x):
        if self.inverted_bottleneck is not None:
            x = self.inverted_bottleneck(x)
        return self.point_linear(self.depth_conv(x))


class Block(nn.Module):
    def __init__(self, conv: MBConv, residual: bool):
        super().__init__()
        self.conv, self.residual = conv, residual

    def forward(self, x):
        return self.conv(x) + x if self.residual else self.conv(x)


class Subnet(nn.Module):
    """A static subnet (blocks per stage: `depths`, kernel and expand ratio read from the
    weights' shapes) up to its penultimate layer: forward(x) is the feature_mix_layer output,
    flattened (`ofa_space.penultimate`). Its parameter names are ofa's static MobileNetV3's."""

    def __init__(self, state: dict[str, torch.Tensor], depths: tuple[int, ...]):
        super().__init__()
        self.first_conv = _conv(state["first_conv.conv.weight"], stride=2, act="h_swish")
        stages = [0] + [unit + 1 for unit, d in enumerate(depths) for _ in range(d)]  # stage of each block
        blocks = []
        for i, stage in enumerate(stages):
            first = i == 0 or stages[i - 1] != stage
            stride = STAGE_STRIDES[stage] if first else 1
            conv = MBConv(state, f"blocks.{i}.conv.", stride, STAGE_ACTS[stage])
            in_c = (
                conv.depth_conv.conv.in_channels
                if conv.inverted_bottleneck is None
                else conv.inverted_bottleneck.conv.in_channels
            )
            out_c = conv.point_linear.conv.out_channels
            if i and first != (in_c != out_c):  # in this space a unit's first block, and only it, changes width
                raise RuntimeError(
                    f"block {i} ({in_c} -> {out_c} channels) does not fit depths {tuple(depths)}: "
                    "the weights are of another arch"
                )
            blocks.append(Block(conv, stride == 1 and in_c == out_c))
        self.blocks = nn.ModuleList(blocks)
        self.final_expand_layer = _conv(state["final_expand_layer.conv.weight"], act="h_swish")
        self.feature_mix_layer = _conv(state["feature_mix_layer.conv.weight"], bn=False, act="h_swish")

    def forward(self, x):
        x = self.first_conv(x)
        for block in self.blocks:
            x = block(x)
        x = self.final_expand_layer(x)
        return self.feature_mix_layer(x.mean((2, 3), keepdim=True)).flatten(1)


class Network(Subnet):
    """A static subnet with its classifier (`classifier`, a torch.nn.Linear, as a zoo
    checkpoint holds it): forward(x) is the logits, as ofa's network of
    `nets.load_checkpoint` gives them (up to float rounding). What `tans search` fine-tunes."""

    def __init__(self, state: dict[str, torch.Tensor], depths: tuple[int, ...]):
        super().__init__(state, depths)
        out_c, in_c = state["classifier.weight"].shape
        self.classifier = nn.Linear(in_c, out_c)

    def forward(self, x):
        return self.classifier(super().forward(x))


def _load(state: dict[str, torch.Tensor], depths: tuple[int, ...], kind: type[Subnet] = Subnet) -> Subnet:
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        with torch.device("meta"):  # no random init of weights that are replaced at once
            net = kind(state, depths)
    except KeyError as e:
        raise RuntimeError(f"the state dict has no {e.args[0]}: it is not an OFA MobileNetV3 network") from None
    keys = net.state_dict().keys()
    net.load_state_dict({k: v for k, v in state.items() if k in keys}, assign=True)
    return net.eval()


def static_subnet(state: dict[str, torch.Tensor], depths: tuple[int, ...], classifier: bool = False) -> Subnet:
    """The subnet of a static state dict (what ofa's get_active_subnet holds, as a zoo
    checkpoint stores it) with `depths` blocks per unit (its arch's), in eval mode. The
    classifier's weights are used only with `classifier` (a `Network`); a missing or
    misshapen layer raises RuntimeError."""
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("blocks.")}
    if blocks != set(range(1 + sum(depths))):
        raise RuntimeError(
            f"the state dict holds {len(blocks)} blocks but depths {tuple(depths)} "
            f"need {1 + sum(depths)}: the weights are of another arch"
        )
    return _load(state, tuple(depths), Network if classifier else Subnet)


def largest_subnet(supernet_state: dict[str, torch.Tensor]) -> Subnet:
    """The largest subnet of an OFA MobileNetV3 supernet state dict, in eval mode. At the
    largest setting ofa's elastic layers use their full weights, so the subnet's weights are
    the supernet's under their static names (`x.conv.conv.weight` -> `x.conv.weight`,
    `x.bn.bn.*` -> `x.bn.*`; the kernel transformation matrices are for smaller kernels)."""
    state = {}
    for key, value in supernet_state.items():
        if key.endswith("_matrix"):
            continue
        key = re.sub(r"\.conv\.conv\.weight$", ".conv.weight", key)
        state[re.sub(r"\.bn\.bn\.", ".bn.", key)] = value
    n = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    return _load(state, (((n - 1) // (len(STAGE_STRIDES) - 1)),) * (len(STAGE_STRIDES) - 1))
