"""Offline data sources and continual-learning task streams (see :mod:`fastcl.data.streams`; Rainbow MNIST: :mod:`fastcl.data.rainbow`)."""

from .meta_tasks import SINUSOID_FAMILIES, SinusoidFamily, TaskBatch
from .sources import DataSourceError, ImageSet, load_cifar100, load_mnist, read_idx, write_idx
from .rainbow import RAINBOW_COLOURS, RainbowMNIST, rainbow_transform
from .streams import (STREAMS, Stream, Task, make_stream, many_permutations, permuted_mnist, rotate,
                      rotated_mnist, split_cifar100)

__all__ = [
    "DataSourceError", "ImageSet", "load_cifar100", "load_mnist", "read_idx", "write_idx",
    "STREAMS", "Stream", "Task", "make_stream", "many_permutations", "permuted_mnist", "rotate",
    "rotated_mnist", "split_cifar100",
    "SINUSOID_FAMILIES", "SinusoidFamily", "TaskBatch",
    "RainbowMNIST", "rainbow_transform", "RAINBOW_COLOURS",
]
