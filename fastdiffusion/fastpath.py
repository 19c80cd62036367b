"""The GPU fast path, with one switch per optimisation; training and sampling resolve their switches here.

- **bf16 autocast** of the network, fp32 master weights (training) and fp32 ODE state (sampling: the process's
  pre/post-conditioning and every solver update stay in fp32; only ``F`` runs in bf16);
- **channels_last** memory for image networks (cuDNN's fast bf16 convolutions are NHWC);
- **cuDNN autotuning** (``torch.backends.cudnn.benchmark``): shapes are fixed, so the one-off search pays;
- **torch.compile**: of the training step's model, and for sampling with **CUDA graphs** (``reduce-overhead``),
  one replay per network call instead of hundreds of kernel launches.

Every switch is ``None`` = automatic (on for CUDA, off on the CPU) unless set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .errors import UserError

if TYPE_CHECKING:
    from .models import ProcessModel

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class FastPath:
    bf16: bool
    channels_last: bool
    compile: bool
    cudnn_benchmark: bool

    @classmethod
    def resolve(cls, device: torch.device, *, precision: str = "auto", channels_last: bool | None = None,
                compile: bool | None = None, cudnn_benchmark: bool | None = None, image: bool = True) -> FastPath:
        """The switches for ``device``: each ``None`` / ``"auto"`` is on for CUDA and off otherwise; channels_last
        only ever applies to image data."""
        if precision not in PRECISIONS:
            raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
        cuda = device.type == "cuda"
        return cls(bf16=precision == "bf16" or (precision == "auto" and cuda),
                   channels_last=image and (cuda if channels_last is None else channels_last),
                   compile=cuda if compile is None else compile,
                   cudnn_benchmark=cuda if cudnn_benchmark is None else cudnn_benchmark)

    def apply_backend(self) -> None:
        """Process-wide backend flags (cuDNN autotuning)."""
        torch.backends.cudnn.benchmark = self.cudnn_benchmark

    def describe(self) -> dict:
        return {"precision": "bf16" if self.bf16 else "fp32", "channels_last": self.channels_last,
                "compile": self.compile, "cudnn_benchmark": self.cudnn_benchmark}


class SamplingNet(nn.Module):
    """The network ``F`` of a model, run on the fast path for sampling: channels_last input, bf16 autocast, fp32
    output; compiled (with CUDA graphs on a GPU) for a fixed batch.

    CUDA graphs need static shapes and reuse their output memory, so a smaller batch (the last one of a run) is padded
    to the first batch seen, and every output is copied out before the next call. Rows never mix in ``F``, so padding
    changes no sample. ``row_cond``: the noise conditioning has one row per sample (not so for a DSNO operator, whose
    conditioning is its M output times).
    """

    def __init__(self, net: nn.Module, fast: FastPath, device: torch.device, row_cond: bool = True,
                 compile_options: dict | None = None) -> None:
        super().__init__()
        self.net, self.fast, self.row_cond = net, fast, row_cond
        self.graphs = fast.compile and device.type == "cuda"
        self.batch: int | None = None
        if fast.compile:
            # In place, so the weights keep their names (no second registered copy of ``net``); triton.cudagraphs is
            # what mode="reduce-overhead" sets, and options and mode cannot be combined.
            net.compile(options={"triton.cudagraphs": self.graphs, **(compile_options or {})}, dynamic=False)

    def forward(self, x: Tensor, c_noise: Tensor, class_labels: Tensor | None = None) -> Tensor:
        n = x.shape[0]
        self.batch = self.batch or n
        if self.graphs and n < self.batch:
            x, class_labels = _pad(x, self.batch), _pad(class_labels, self.batch)
            c_noise = _pad(c_noise, self.batch) if self.row_cond else c_noise
        if self.fast.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.graphs:
            torch.compiler.cudagraph_mark_step_begin()  # each call is a new step: earlier outputs were copied out
        with torch.autocast(x.device.type, torch.bfloat16, enabled=self.fast.bf16):
            out = self.net(x, c_noise, class_labels)
        return out[:n].to(torch.float32, copy=self.graphs)


def _pad(t: Tensor | None, n: int) -> Tensor | None:
    """``t`` with its first row repeated up to ``n`` rows (None stays None)."""
    if t is None:
        return t
    return torch.cat([t, t[:1].expand(n - t.shape[0], *t.shape[1:])])


def accelerate(model: ProcessModel, device: str | torch.device | None = None, *, precision: str = "auto",
               channels_last: bool | None = None, compile: bool | None = None,
               cudnn_benchmark: bool | None = None, compile_options: dict | None = None) -> ProcessModel:
    """Put a loaded model (``load_model``: a denoiser, PSLD model or DSNO generator) on the sampling fast path, in
    place, and return it. The switches default to on for CUDA and off on the CPU (see ``FastPath``);
    ``compile_options`` are Inductor options for the compiled network."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    image = len(model.data_shape) == 3
    fast = FastPath.resolve(device, precision=precision, channels_last=channels_last, compile=compile,
                            cudnn_benchmark=cudnn_benchmark, image=image)
    if isinstance(model.net, SamplingNet):
        raise UserError("this model is already on the fast path (accelerate() was called twice)")
    fast.apply_backend()
    if fast.channels_last:
        model.net.to(memory_format=torch.channels_last)
    model.net = SamplingNet(model.net, fast, device, row_cond=model.family != "dsno",
                            compile_options=compile_options)
    return model


def fast_path_of(model: Callable) -> dict:
    """The switches a model samples with, for protocols and result files."""
    from .models import ProcessModel  # models.files imports this module

    if isinstance(model, ProcessModel) and isinstance(model.net, SamplingNet):
        return model.net.fast.describe()
    return {"precision": "fp32", "channels_last": False, "compile": False,
            "cudnn_benchmark": torch.backends.cudnn.benchmark}
