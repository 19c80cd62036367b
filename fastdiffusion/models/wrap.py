"""Any discrete-time network as a model: ``wrap_eps(fn, alphas_cumprod)`` / ``wrap_v(...)`` turn a callable
``fn(x, t)`` that predicts epsilon (or v) at DDPM timesteps into a ``ProcessModel`` with the ``DiscreteVP`` process, a
denoiser D(x; sigma) that every EDM-family sampler and ``fastdiffusion.sample`` take."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from ..processes import DiscreteVP
from .model import ProcessModel

__all__ = ["CALLABLE_ARCH", "TimestepNet", "wrap_discrete", "wrap_eps", "wrap_v"]

CALLABLE_ARCH = "callable"  # the network config of a wrapped callable: it has no config to rebuild it from


class TimestepNet(nn.Module):
    """A callable ``fn(x, t[, class_labels])`` as the network ``F(c_in x, c_noise, class_labels)`` of a
    ``DiscreteVP`` model, whose c_noise is the fractional timestep t(sigma). An ``nn.Module`` fn is registered, so
    ``.to(device)`` and ``parameters()`` reach it."""

    def __init__(self, fn: Callable[..., Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor, c_noise: Tensor, class_labels: Tensor | None = None) -> Tensor:
        return self.fn(x, c_noise) if class_labels is None else self.fn(x, c_noise, class_labels)


def wrap_discrete(fn: Callable[..., Tensor], alphas_cumprod: Sequence[float] | Tensor, prediction: str,
                  data_shape: Sequence[int] = (), label_dim: int = 0) -> ProcessModel:
    """``fn(x, t)`` predicting ``prediction`` ('epsilon', 'v_prediction' or 'sample') on the schedule
    ``alphas_cumprod`` (alpha_bar_t, t = 0 .. T-1) as a model ``D(x, sigma, class_labels=None)``; ``data_shape`` is
    the per-sample shape (for ``generate``); with ``label_dim`` K > 0 it is called ``fn(x, t, y)`` with (N, K) one-hot
    labels when sampled with labels."""
    process = DiscreteVP([float(a) for a in alphas_cumprod], prediction)
    cfg = {"arch": CALLABLE_ARCH, "label_dim": int(label_dim)}
    return ProcessModel(TimestepNet(fn), process, cfg, tuple(data_shape)).eval()


def wrap_eps(fn: Callable[..., Tensor], alphas_cumprod: Sequence[float] | Tensor, data_shape: Sequence[int] = (),
             label_dim: int = 0) -> ProcessModel:
    """An epsilon-prediction network ``fn(x, t)``: D(x; sigma) = x - sigma eps(x / sqrt(sigma^2 + 1), t(sigma))."""
    return wrap_discrete(fn, alphas_cumprod, "epsilon", data_shape, label_dim)


def wrap_v(fn: Callable[..., Tensor], alphas_cumprod: Sequence[float] | Tensor, data_shape: Sequence[int] = (),
           label_dim: int = 0) -> ProcessModel:
    """A v-prediction network ``fn(x, t)``: D(x; sigma) = x / (sigma^2 + 1) - sigma v(x / sqrt(sigma^2 + 1), t) /
    sqrt(sigma^2 + 1)."""
    return wrap_discrete(fn, alphas_cumprod, "v_prediction", data_shape, label_dim)
