"""DSNO's neural-operator student (Zheng et al. 2023, "Fast Sampling of Diffusion Models via Operator Learning",
arXiv 2211.13449): a teacher's denoiser network evaluated at M output times at once, with temporal convolutions
parameterised in Fourier space after its residual blocks.

Layout. The input ``x`` (N, C, ...) is broadcast to the M output times and the backbone runs on the N·M rows, row
(n, m) conditioned on output time m's noise label ``c_m``; every spatial block therefore acts on one time point.
After every residual block that keeps the resolution (the U-Net's encoder, middle and decoder blocks, not its
up/down-sampling blocks; every block of the MLP) the block output h (N·M, C, ...) is regrouped as u (N, M, C, ...)
and mixed along the time axis only:

    TimeConv(u) = u + act(v),    v = irfft_M(v_hat),    u_hat = rfft_M(u)                 (FFT along m, per pixel)
    v_hat_k[o] = sum_i R_k[i, o] u_hat_k[i]    for modes k < K,    v_hat_k = 0 for k >= K

with complex weights R in C^(K x C x C), one matrix per mode shared by all pixels and samples. R starts at zero, so
every TimeConv starts as the identity and the student starts as exactly the teacher applied at each output time:
``out[:, m] = F(x, c_m)``.

Differences from the reference code (``models/layers.py``), all deliberate: R starts at 0 instead of U[0, 1)/C²
(exact identity at init); ``act`` defaults to the identity, because PyTorch's LeakyReLU has slope 0.01 at exactly 0
and would damp the first updates of zero-initialised layers a hundredfold ('leaky_relu' is available); the backbone's
stem is applied to the M broadcast copies instead of once (same result, M x a 3x3 conv). As in the reference, the
FFT runs in fp32 outside autocast and treats the M output times as equally spaced and periodic.

Each TimeConv is attached to its block as a forward hook, so the backbone keeps the teacher's code and parameter
names: a teacher's state dict loads into ``backbone`` unchanged and the operator is generic over any backbone
whose residual blocks are ``UNetBlock`` (``SongUNet``) or ``_MLPBlock`` (``MLP``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastdiffusion.errors import UserError
from fastdiffusion.nets.mlp import _MLPBlock
from fastdiffusion.nets.unet import UNetBlock

__all__ = ["DSNOOperator", "TimeConv", "time_mixed_blocks"]

ACTIVATIONS = ("none", "leaky_relu")


class TimeConv(nn.Module):
    """``u + act(irfft_M(R rfft_M(u)[:K]))`` along dim 1 of u (N, M, C, ...); see the module docstring.

    ``weight`` holds R as real pairs (K, C, C, 2) = (Re, Im), zero at init.
    """

    def __init__(self, channels: int, num_times: int, modes: int, activation: str = "none") -> None:
        super().__init__()
        if not 1 <= modes <= num_times // 2 + 1:
            raise UserError(f"modes={modes} must be between 1 and num_times // 2 + 1 = {num_times // 2 + 1} "
                            f"(an rFFT over {num_times} times has {num_times // 2 + 1} frequencies)")
        if activation not in ACTIVATIONS:
            raise UserError(f"activation={activation!r} is not valid; choose one of {', '.join(ACTIVATIONS)}")
        self.channels, self.num_times, self.modes, self.activation = channels, num_times, modes, activation
        self.weight = nn.Parameter(torch.zeros(modes, channels, channels, 2))

    def forward(self, u: Tensor) -> Tensor:
        if u.shape[1] != self.num_times or u.shape[2] != self.channels:
            raise ValueError(f"TimeConv expects (N, {self.num_times}, {self.channels}, ...), got {tuple(u.shape)}")
        with torch.autocast(u.device.type, enabled=False):
            u32 = u.float()
            u_hat = torch.fft.rfft(u32, dim=1)[:, : self.modes]  # (N, K, C, ...)
            r = torch.view_as_complex(self.weight.float())  # (K, C_in, C_out)
            v_hat = torch.einsum("nki...,kio->nko...", u_hat, r)
            v = torch.fft.irfft(v_hat, n=self.num_times, dim=1)  # modes >= K are zero-padded by irfft
            if self.activation == "leaky_relu":
                v = F.leaky_relu(v, 0.01)
            return (u32 + v).to(u.dtype)

    def hook(self, module: nn.Module, args: Any, output: Tensor) -> Tensor:
        """Forward hook on a backbone block: regroup its (N·M, C, ...) output by time point, mix, flatten back."""
        return self(output.unflatten(0, (-1, self.num_times))).flatten(0, 1)


def time_mixed_blocks(backbone: nn.Module) -> list[tuple[nn.Module, int]]:
    """The residual blocks that get a TimeConv, in registration order, with their output channels: every
    ``UNetBlock`` that does not resample and every ``_MLPBlock``."""
    blocks: list[tuple[nn.Module, int]] = []
    for module in backbone.modules():
        if isinstance(module, UNetBlock) and module.resample is None:
            blocks.append((module, module.out_channels))
        elif isinstance(module, _MLPBlock):
            blocks.append((module, module.fc1.out_features))
    return blocks


class DSNOOperator(nn.Module):
    """``G(x, c) -> (N, M, out_channels, ...)``: the backbone at the M noise labels ``c`` (M,) with TimeConv layers.

    ``backbone`` is the teacher network's config (``net_config`` output, e.g. a model's ``net_config``);
    ``num_times`` is M and ``modes`` is K. Load the teacher's weights with ``op.backbone.load_state_dict(sd)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        *,
        backbone: dict | None = None,
        num_times: int = 4,
        modes: int = 2,
        activation: str = "none",
    ) -> None:
        super().__init__()
        from fastdiffusion.nets import build_net  # the registry imports this module

        if not isinstance(backbone, dict) or "arch" not in backbone:
            raise UserError("the dsno network needs backbone=<the teacher's network config> (a dict with 'arch')")
        if backbone["arch"] == "dsno":
            raise UserError("a dsno network cannot be the backbone of another")
        if num_times < 1:
            raise UserError(f"num_times must be >= 1, got {num_times}")
        out_channels = in_channels if out_channels is None else out_channels
        if (backbone.get("in_channels"), backbone.get("out_channels")) != (in_channels, out_channels):
            raise UserError(f"dsno: in/out channels {in_channels}/{out_channels} differ from the backbone's "
                            f"{backbone.get('in_channels')}/{backbone.get('out_channels')}")
        cfg = dict(backbone)
        self.backbone = build_net(cfg.pop("arch"), **cfg)
        self.in_channels, self.out_channels, self.num_times, self.modes = in_channels, out_channels, num_times, modes
        blocks = time_mixed_blocks(self.backbone)
        if not blocks:
            raise UserError(f"dsno: backbone arch {backbone['arch']!r} has no residual block to mix in time")
        # modes = 0: no temporal layers, every output time is the backbone alone (DSNO's key ablation)
        mixed = blocks if modes else []
        self.time_convs = nn.ModuleList(TimeConv(c, num_times, modes, activation) for _, c in mixed)
        for (block, _), tc in zip(mixed, self.time_convs, strict=True):
            block.register_forward_hook(tc.hook)

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """x: (N, C, ...) one input per sample; noise_labels: (M,) the output times' c_noise; class_labels as for the
        backbone, per sample. Returns (N, M, out_channels, ...) in the dtype of ``x``."""
        n, m = x.shape[0], self.num_times
        c = noise_labels.reshape(-1)
        if c.numel() != m:
            raise ValueError(f"dsno: expected {m} noise labels (one per output time), got {c.numel()}")
        rows = x.unsqueeze(1).expand(n, m, *x.shape[1:]).flatten(0, 1)  # row n*M + m is sample n at time m
        labels = None if class_labels is None else class_labels.repeat_interleave(m, dim=0)
        out = self.backbone(rows, c.repeat(n), labels)
        return out.unflatten(0, (n, m))
