"""Model types: a plain network with its process, network config and data shape (``ProcessModel``), and DSNO's
one-call student (``OneStepGenerator``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..nets import DSNOOperator
from ..processes import Process
from ..processes.edm import EDMFamily


class ProcessModel(nn.Module):
    """A network and what is needed to rebuild and sample it: its process, network config and per-sample shape.

    ``model(x, sigma, class_labels=None)`` is the process's parameterisation of the network
    (``Process.network_output``): the denoiser D(x; sigma) of EDM eq. 7 for the EDM family, ε_θ(z, t) for PSLD.
    """

    def __init__(self, net: nn.Module, process: Process, net_config: dict, data_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.net = net
        self.process = process
        self.net_config = dict(net_config)
        self.data_shape = tuple(data_shape)

    @property
    def family(self) -> str:
        """The samplers that integrate this model: its process's family."""
        return self.process.family

    @property
    def sigma_min(self) -> float:
        return self.process.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.process.sigma_max

    def sampling_range(self) -> tuple[float, float]:
        return self.process.sampling_range()

    def forward(self, x: Tensor, sigma: Tensor | float, class_labels: Tensor | None = None) -> Tensor:
        return self.process.network_output(self.net, x, sigma, class_labels)


class OneStepGenerator(ProcessModel):
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

    process: EDMFamily

    def __init__(self, net: DSNOOperator, process: EDMFamily, net_config: dict, data_shape: tuple[int, ...], *,
                 sigmas: list[float], cond_sigmas: list[float], sigma_max: float) -> None:
        super().__init__(net, process, net_config, data_shape)
        if not len(sigmas) == len(cond_sigmas) == net.num_times:
            raise ValueError("OneStepGenerator: sigmas, cond_sigmas and the network's num_times must agree")
        self.generator_config = {"sigmas": [float(s) for s in sigmas], "cond_sigmas": [float(s) for s in cond_sigmas],
                                 "sigma_max": float(sigma_max)}
        self.register_buffer("sigmas", torch.tensor(sigmas, dtype=torch.float64), persistent=False)
        self.register_buffer("cond_sigmas", torch.tensor(cond_sigmas, dtype=torch.float64), persistent=False)

    @property
    def family(self) -> str:
        return "dsno"

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
