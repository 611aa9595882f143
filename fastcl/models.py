"""Models of the papers: MLPs for the MNIST streams, the reduced ResNet-18 for split streams."""

from __future__ import annotations

from typing import Sequence

from torch import nn

__all__ = ["MLP"]


class MLP(nn.Sequential):
    """Fully connected ReLU network.

    HAL's MNIST model is ``MLP(784, [256, 256], 10)``; EMCL / La-MAML use ``[100, 100]``.

    Args:
        in_features: input size (784 for flattened MNIST).
        hidden: sizes of the hidden layers.
        out_features: number of classes.
    """

    def __init__(self, in_features: int = 784, hidden: Sequence[int] = (256, 256), out_features: int = 10):
        layers: list[nn.Module] = []
        prev = in_features
        for h in hidden:
            layers += [nn.Linear(prev, h), nn.ReLU()]
            prev = h
        layers.append(nn.Linear(prev, out_features))
        super().__init__(*layers)
