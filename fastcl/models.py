"""Networks of the continual-learning papers fastcl implements.

* :class:`MLP`: the fully connected net of the MNIST streams (784-100-100-10 in GEM, La-MAML and EMCL; 784-256-256-10 in HAL).
* :class:`ReducedResNet18`: the ResNet-18 of GEM / HAL / EMCL on CIFAR-100 and miniImageNet:
  BasicBlocks [2, 2, 2, 2], a 3x3 convolutional stem (no max-pool), ``nf = 20`` initial
  feature maps (three times fewer than the usual 64), stages of ``nf, 2nf, 4nf, 8nf`` maps,
  BatchNorm after every convolution, global average pooling and a linear head.
"""

from __future__ import annotations

import math
import operator
import re
from typing import Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["MLP", "BasicBlock", "ReducedResNet18", "ConvNet", "param_shapes"]


class MLP(nn.Sequential):
    """Fully connected ReLU net; ``sizes`` are the widths from input to output (784, 100, 100, 10).

    Its modules are exactly those of the plain ``nn.Sequential(nn.Linear(784, 100), nn.ReLU(),
    nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10))``, so its state-dict keys (``0.weight``,
    ``0.bias``, ``2.weight``, ...) are that Sequential's and either loads the other's weights.
    ``forward`` flattens ``[B, *shape]`` inputs to ``[B, prod(shape)]`` first (``x.flatten(1)``).
    State dicts of earlier fastcl versions, whose MLP began with an ``nn.Flatten`` module (keys
    ``1.weight``, ``3.weight``, ...), still load: their keys are renamed on load.

    For HAL (:func:`fastcl.algorithms.hal.split_model`), :meth:`features` is the net up to the
    last hidden ReLU and :attr:`head` the last Linear.

    Args:
        sizes: the widths, at least two (input, output).
        generator: initialise the weights from this generator instead of torch's global one (which
            is then left untouched). The initialisation is ``nn.Linear``'s default either way
            (Kaiming-uniform weights, ``a = sqrt(5)``; biases uniform in +-1/sqrt(fan_in)), so
            ``MLP(s, generator=torch.Generator().manual_seed(k))`` equals ``torch.manual_seed(k);
            MLP(s)`` on the CPU.
    """

    def __init__(self, sizes: Sequence[int] = (784, 100, 100, 10), generator: Optional[torch.Generator] = None):
        given = tuple(sizes)
        try:
            sizes = tuple(operator.index(n) for n in given)
        except TypeError:
            sizes = ()
        if len(sizes) < 2 or min(sizes) < 1 or any(isinstance(n, bool) for n in given):
            raise ValueError(f"sizes must be at least two ints >= 1 (input, ..., output widths), got {given!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            if generator is None:
                layers.append(nn.Linear(fan_in, fan_out))
            else:  # no draw from the global generator: allocate, then initialise from ``generator``
                layer = nn.utils.skip_init(nn.Linear, fan_in, fan_out)
                _init_linear_(layer, generator)
                layers.append(layer)
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        super().__init__(*layers)
        self.sizes = sizes
        self._register_load_state_dict_pre_hook(_rename_flatten_keys)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.flatten(1))

    def features(self, x: Tensor) -> Tensor:
        """The last hidden layer's activations ``[B, sizes[-2]]`` (the input for a one-layer net)."""
        x = x.flatten(1)
        for m in list(self)[:-1]:
            x = m(x)
        return x

    @property
    def head(self) -> nn.Linear:
        """The output layer (the last Linear)."""
        return self[-1]

    def __getitem__(self, idx):
        if isinstance(idx, slice):  # a slice is a plain Sequential (MLP's constructor takes sizes)
            return nn.Sequential(*list(self)[idx])
        return super().__getitem__(idx)


def _init_linear_(layer: nn.Linear, generator: torch.Generator) -> None:
    """``nn.Linear.reset_parameters`` drawing from ``generator``."""
    with torch.no_grad():
        nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
        fan_in = layer.weight.shape[1]
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        nn.init.uniform_(layer.bias, -bound, bound, generator=generator)


def _rename_flatten_keys(state_dict, prefix, local_metadata, strict, missing_keys,
                         unexpected_keys, error_msgs) -> None:
    """Load hook of :class:`MLP`: a state dict of the old layout (an ``nn.Flatten`` at index 0, so
    the Linears at odd indices: ``1.weight``, ``3.weight``, ...) gets the keys of the plain
    Sequential (``0.weight``, ``2.weight``, ...). Linears of the new layout sit at even indices,
    so ``0.weight`` tells the layouts apart."""
    if prefix + "0.weight" in state_dict or prefix + "1.weight" not in state_dict:
        return
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.(weight|bias)$")
    for key in list(state_dict):
        m = pattern.match(key)
        if m:
            state_dict[f"{prefix}{int(m.group(1)) - 1}.{m.group(2)}"] = state_dict.pop(key)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a residual connection (He et al., 2016).

    The shortcut is a strided 1x1 convolution + BatchNorm when the block changes the number of
    maps or the resolution, the identity otherwise.
    """

    def __init__(self, in_maps: int, out_maps: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_maps, out_maps, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_maps)
        self.conv2 = nn.Conv2d(out_maps, out_maps, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_maps)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_maps != out_maps:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_maps, out_maps, 1, stride=stride, bias=False), nn.BatchNorm2d(out_maps)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ReducedResNet18(nn.Module):
    """ResNet-18 with ``nf`` initial maps (20 in GEM / HAL / EMCL), for 3-channel images.

    Args:
        num_classes: outputs of the linear head (100 for CIFAR-100 / miniImageNet splits).
        nf: maps of the stem and of the first stage; the stages have nf, 2nf, 4nf, 8nf.
        in_channels: input channels (3).

    Input ``[B, in_channels, H, W]`` (32x32 for CIFAR), output ``[B, num_classes]`` logits.
    """

    def __init__(self, num_classes: int = 100, nf: int = 20, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, nf, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(nf)
        stages = []
        in_maps = nf
        for i, blocks in enumerate((2, 2, 2, 2)):
            out_maps = nf * 2**i
            layers = []
            for b in range(blocks):
                layers.append(BasicBlock(in_maps, out_maps, stride=(1 if i == 0 or b > 0 else 2)))
                in_maps = out_maps
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(in_maps, num_classes)

    def features(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.features(x))


def param_shapes(model: nn.Module) -> list[tuple[int, ...]]:
    """The shapes of ``model.parameters()``, in order."""
    return [tuple(p.shape) for p in model.parameters()]


class ConvNet(nn.Module):
    """Small convolutional classifier of online meta-learning (FTML's Rainbow MNIST network, lighter).

    ``depth`` 3x3 convolutions of ``channels`` maps with stride 2 and padding 1, each followed by
    ReLU, then a linear head on the flattened maps. FTML (Finn et al., 2019, App. C) uses 5
    convolutions of 32 3x3 filters with BatchNorm; this net keeps 32 maps but has no BatchNorm
    (batch statistics would tie the examples of a minibatch together inside the functional inner
    loop and cannot be updated under vmap), and uses 4 stride-2 convolutions (28 -> 14 -> 7 -> 4
    -> 2) to fit CPU budgets: on one Rainbow MNIST task it trained faster than 5 (87.8% vs 78.3%
    test accuracy after 400 Adam steps of 20 examples).

    Args:
        in_channels: input maps (3 for Rainbow MNIST).
        num_classes: outputs.
        channels: maps of every convolution.
        depth: number of convolutions.
        image_size: input height = width.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, channels: int = 32, depth: int = 4,
                 image_size: int = 28):
        super().__init__()
        layers: list[nn.Module] = []
        size = image_size
        for i in range(depth):
            layers += [nn.Conv2d(in_channels if i == 0 else channels, channels, 3, stride=2, padding=1), nn.ReLU()]
            size = (size - 1) // 2 + 1
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(channels * size * size, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
