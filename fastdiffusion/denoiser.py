"""A trained model: a plain network wrapped in its process's preconditioning, exposed as ``D(x, sigma)``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .processes import Process


class ProcessModel(nn.Module):
    """A network with what is needed to rebuild and sample it: its process, network config and per-sample shape."""

    def __init__(self, net: nn.Module, process: Process, net_config: dict, data_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.net = net
        self.process = process
        self.net_config = dict(net_config)
        self.data_shape = tuple(data_shape)


class Denoiser(ProcessModel):
    """``D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)`` (EDM eq. 7), the coefficients asked of the process.

    It knows its process, the network config it was built from and the per-sample data shape, so a saved model can be
    rebuilt and sampled without any other information. The outer combination runs in fp32 even when the network runs
    under bf16 autocast: the skip path carries most of the signal at low noise.
    """

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


class PSLDModel(ProcessModel):
    """A PSLD ε-network ``ε_θ(z, t)`` on the augmented state z = (x, m): the network sees and predicts both channel
    groups (2C channels in and out) and is conditioned on ``process.c_noise(t)``; the score is −L_t^{-T} ε_θ.

    Like ``Denoiser`` it knows its process, network config and data shape (of x alone), so ``load_model`` rebuilds it
    from its JSON description. The output is returned in fp32 whatever precision the network runs in.
    """


    def forward(self, z: Tensor, t: Tensor | float, class_labels: Tensor | None = None) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64, device=z.device).reshape(-1).expand(z.shape[0])
        return self.net(z.float(), self.process.c_noise(t).float(), class_labels).float()


def wrap_net(net: nn.Module, process: Process, net_config: dict, data_shape: tuple[int, ...]) -> nn.Module:
    """The trained-model wrapper for ``process``: ``PSLDModel`` for PSLD, else the EDM-family ``Denoiser``."""
    cls = PSLDModel if getattr(process, "family", "edm") == "psld" else Denoiser
    return cls(net, process, net_config, data_shape)


class OneStepGenerator(nn.Module):
    """DSNO's student as a model: the initial state x_T = sigma_T z -> the teacher's PF-ODE states at M output sigmas,
    all in one call of a ``DSNOOperator`` ``F`` (EDM-family processes).

    Output m (m = 0 the final sample at sigma_0 = 0, sigma_m increasing with m, all below sigma_T) is

        D_m = c_skip(sigma_T) x_T + c_out(sigma_T) F_m(c_in(sigma_T) x_T; c_noise(sigma~_m))
        x_m = (sigma_m / sigma_T) x_T + (1 - sigma_m / sigma_T) D_m

    with the process's preconditioning at the input's noise level sigma_T and the noise embedding of the output time
    (``cond_sigmas``: sigma~_m = sigma_m, and for sigma_0 = 0 the teacher grid's last positive sigma). ``x_m`` is
    DDIM's form: one Euler step from sigma_T to sigma_m with the denoised estimate D_m, so D_m is an image at every
    m, and the final sample is D_0. Returns (N, M, *data_shape) in fp32.
    """

    family = "dsno"

    def __init__(self, net: nn.Module, process: Process, net_config: dict, data_shape: tuple[int, ...], *,
                 sigmas: list[float], cond_sigmas: list[float], sigma_max: float) -> None:
        super().__init__()
        if not (len(sigmas) == len(cond_sigmas) == getattr(net, "num_times", len(sigmas))):
            raise ValueError("OneStepGenerator: sigmas, cond_sigmas and the network's num_times must agree")
        self.net = net
        self.process = process
        self.net_config = dict(net_config)
        self.data_shape = tuple(data_shape)
        self.generator_config = {"sigmas": [float(s) for s in sigmas], "cond_sigmas": [float(s) for s in cond_sigmas],
                                 "sigma_max": float(sigma_max)}
        self.register_buffer("sigmas", torch.tensor(sigmas, dtype=torch.float64), persistent=False)
        self.register_buffer("cond_sigmas", torch.tensor(cond_sigmas, dtype=torch.float64), persistent=False)

    @property
    def sigma_max(self) -> float:
        return self.generator_config["sigma_max"]

    @property
    def sigma_min(self) -> float:
        return min(self.generator_config["cond_sigmas"])

    def sampling_range(self) -> tuple[float, float]:
        """The one noise level it starts from is sigma_T; the lower end only bounds the (unused) schedule."""
        return self.sigma_min, self.sigma_max

    def ratios(self) -> Tensor:
        """r_m = sigma_m / sigma_T, shape (M,), float32."""
        return (self.sigmas / self.sigma_max).float()

    def forward(self, x: Tensor, sigma: Tensor | float | None = None, class_labels: Tensor | None = None) -> Tensor:
        """x: (N, *data_shape) the initial state at sigma_T; ``sigma``, if given (samplers pass it), must be sigma_T."""
        if sigma is not None:
            s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
            if not torch.allclose(s.cpu(), torch.tensor(self.sigma_max, dtype=torch.float64), rtol=1e-4):
                raise ValueError(f"this one-step generator starts at sigma = {self.sigma_max:g}, not {float(s[0]):g}")
        x = x.float()
        sigma_t = torch.full((1,), self.sigma_max, dtype=torch.float64, device=x.device)
        pc = self.process.precond(sigma_t)
        c_skip, c_out, c_in = (float(c) for c in (pc.c_skip, pc.c_out, pc.c_in))
        c_noise = self.process.precond(self.cond_sigmas).c_noise.float()
        out = self.net(c_in * x, c_noise, class_labels).float()  # (N, M, ...)
        x_t = x.unsqueeze(1)
        denoised = c_skip * x_t + c_out * out
        r = self.ratios().reshape((1, -1) + (1,) * (x.ndim - 1))
        return r * x_t + (1 - r) * denoised

    @staticmethod
    def data_estimates(x: Tensor, states: Tensor, ratios: Tensor) -> Tensor:
        """Invert the output form: D_m = (x_m - r_m x_T) / (1 - r_m) for states (N, M, ...) and r (M,) < 1."""
        r = ratios.reshape((1, -1) + (1,) * (x.ndim - 1))
        return (states - r * x.unsqueeze(1)) / (1 - r)
