"""Learning to Forget (L2F): task-dependent layer-wise attenuation of MAML's initialisation
(Baik et al., CVPR 2020; supplementary Sec. E.1.3).

For each task, before adaptation:

1. one forward/backward of the support loss at theta gives ``grad L(theta; D)``;
2. its layer-wise means, one scalar per parameter tensor (detached), form the task embedding
   ``v`` (``[B, L]`` for a meta-batch, L = number of parameter tensors);
3. the attenuator ``gamma = g_phi(v)``, an MLP with L hidden units per layer, ReLU between
   layers and a sigmoid at the end, gives one factor per tensor, ``gamma in (0, 1)^L``;
4. the inner loop starts from the attenuated ``theta_l <- gamma_l * theta_l``.

theta and phi are meta-updated together by Adam on the MAML meta-objective, and the same
attenuation is applied at evaluation (:meth:`L2F.adapt`).

Depth of g_phi. The supplementary says "a 3-layer MLP, each layer with l hidden units"; the
authors' public code uses two Linear layers (Linear-ReLU-Linear-Sigmoid). ``attenuator_layers``
picks the number of Linear layers; the default is 3, the paper's text (the specification this
project follows). At initialisation sigmoid outputs are near 0.5, so theta starts halved; that
is the method as published.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from .maml import MAML, MAMLConfig

__all__ = ["L2FConfig", "L2F", "attenuator_mlp"]


@dataclass
class L2FConfig(MAMLConfig):
    """MAML's settings plus the attenuator's.

    Attributes:
        attenuator_layers: Linear layers of g_phi (3: the supplementary; 2: the authors' code).
    """

    attenuator_layers: int = 3

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.attenuator_layers, bool) or not isinstance(self.attenuator_layers, int) \
                or self.attenuator_layers < 1:
            raise ValueError(f"attenuator_layers must be an int >= 1, got {self.attenuator_layers!r}")


def attenuator_mlp(num_tensors: int, layers: int = 3) -> nn.Sequential:
    """g_phi: ``layers`` Linear(L, L) layers, ReLU between them, sigmoid at the end."""
    mods: list[nn.Module] = []
    for i in range(layers):
        mods.append(nn.Linear(num_tensors, num_tensors))
        mods.append(nn.ReLU() if i < layers - 1 else nn.Sigmoid())
    return nn.Sequential(*mods)


class L2F(MAML):
    """MAML + Learning-to-Forget attenuation (see the module docstring).

    Args:
        model: f_theta, as in :class:`MAML`.
        config: :class:`L2FConfig`; a plain :class:`~fastcl.algorithms.maml.MAMLConfig` is taken as
            its MAML settings with the attenuator's defaults.
        input_shape: as in :class:`MAML`.
        attenuator: g_phi mapping ``[B, L]`` layer-wise gradient means to ``[B, L]`` factors
            (default :func:`attenuator_mlp` with ``config.attenuator_layers``), built on the
            model's device and dtype.
    """

    def __init__(self, model: nn.Module, config: Optional[L2FConfig] = None,
                 input_shape: Optional[Sequence[int]] = None, attenuator: Optional[nn.Module] = None):
        config = config if config is not None else L2FConfig()
        if isinstance(config, MAMLConfig) and not isinstance(config, L2FConfig):
            # MAML's settings with the attenuator's defaults (L2FConfig(**asdict(config), attenuator_layers=...))
            config = L2FConfig(**asdict(config))
        if not isinstance(config, L2FConfig):
            raise TypeError(f"config must be an L2FConfig (or a MAMLConfig, given the attenuator's defaults), "
                            f"got {type(config).__name__}")
        n = sum(1 for p in model.parameters() if p.requires_grad)
        p0 = next(model.parameters())
        self.attenuator = (attenuator if attenuator is not None
                           else attenuator_mlp(n, config.attenuator_layers)).to(device=p0.device, dtype=p0.dtype)
        super().__init__(model, config, input_shape)

    def meta_parameters(self) -> list[Tensor]:
        return list(self.params) + [p for p in self.attenuator.parameters() if p.requires_grad]

    def gamma(self, support_x: Tensor, support_y: Tensor, params: Optional[Sequence[Tensor]] = None) -> Tensor:
        """``[B, L]`` attenuation of each task: g_phi of the layer-wise mean support gradient at theta."""
        b = support_x.shape[0]
        with torch.enable_grad():
            start = [p.detach().requires_grad_(True) for p in self.expand(b, params)]
            loss = self.task_losses(start, support_x, support_y).sum()
            grads = torch.autograd.grad(loss, start)
        embedding = torch.stack([g.reshape(b, -1).mean(1) for g in grads], dim=1)  # [B, L], detached
        return self.attenuator(embedding)

    def initial_fast(self, support_x: Tensor, support_y: Tensor, params: Optional[Sequence[Tensor]] = None,
                     create_graph: bool = True) -> list[Tensor]:
        """theta_l * gamma_l per task: ``[B, *shape]`` for every tensor."""
        gamma = self.gamma(support_x, support_y, params)
        theta = self.params if params is None else list(params)
        return [g.view(-1, *([1] * p.dim())) * p for g, p in zip(gamma.unbind(1), theta)]

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["attenuator"] = {k: v.clone() for k, v in self.attenuator.state_dict().items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.attenuator.load_state_dict(state["attenuator"])
        super().load_state_dict(state)
