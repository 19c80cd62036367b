"""A trained model: a plain network wrapped in its process's preconditioning, exposed as ``D(x, sigma)``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .processes import Process


class Denoiser(nn.Module):
    """``D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)`` (EDM eq. 7), the coefficients asked of the process.

    It knows its process, the network config it was built from and the per-sample data shape, so a saved model can be
    rebuilt and sampled without any other information. The outer combination runs in fp32 even when the network runs
    under bf16 autocast: the skip path carries most of the signal at low noise.
    """

    def __init__(self, net: nn.Module, process: Process, net_config: dict, data_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.net = net
        self.process = process
        self.net_config = dict(net_config)
        self.data_shape = tuple(data_shape)

    @property
    def sigma_min(self) -> float:
        return self.process.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.process.sigma_max

    def forward(self, x: Tensor, sigma: Tensor | float, class_labels: Tensor | None = None) -> Tensor:
        x = x.float()
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1).expand(x.shape[0])
        pc = self.process.precond(sigma)
        shape = (-1,) + (1,) * (x.ndim - 1)
        c_skip, c_out, c_in = (c.float().reshape(shape) for c in (pc.c_skip, pc.c_out, pc.c_in))
        out = self.net(c_in * x, pc.c_noise.float(), class_labels)
        return c_skip * x + c_out * out.float()


class PSLDModel(nn.Module):
    """A PSLD ε-network ``ε_θ(z, t)`` on the augmented state z = (x, m): the network sees and predicts both channel
    groups (2C channels in and out) and is conditioned on ``process.c_noise(t)``; the score is −L_t^{-T} ε_θ.

    Like ``Denoiser`` it knows its process, network config and data shape (of x alone), so ``load_model`` rebuilds it
    from its JSON description. The output is returned in fp32 whatever precision the network runs in.
    """

    def __init__(self, net: nn.Module, process: Process, net_config: dict, data_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.net = net
        self.process = process
        self.net_config = dict(net_config)
        self.data_shape = tuple(data_shape)

    def forward(self, z: Tensor, t: Tensor | float, class_labels: Tensor | None = None) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64, device=z.device).reshape(-1).expand(z.shape[0])
        return self.net(z.float(), self.process.c_noise(t).float(), class_labels).float()


def wrap_net(net: nn.Module, process: Process, net_config: dict, data_shape: tuple[int, ...]) -> nn.Module:
    """The trained-model wrapper for ``process``: ``PSLDModel`` for PSLD, else the EDM-family ``Denoiser``."""
    cls = PSLDModel if getattr(process, "family", "edm") == "psld" else Denoiser
    return cls(net, process, net_config, data_shape)
