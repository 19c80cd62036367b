"""Residual MLP for low-dimensional data (2-D toys, d-dimensional Gaussian mixtures).

    emb   = SiLU(W_e2 SiLU(W_e1 [PE(c_noise) + W_y y]))
    h_0   = W_in x
    h_k+1 = h_k + W_k2 drop(SiLU(W_k1 SiLU(LN(h_k)) + A_k emb))            k = 0 .. num_blocks - 1
    out   = W_out SiLU(LN(h_K))                                              W_out zero-initialised

The same forward signature as the U-Net, so the processes and samplers treat both alike.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from fastdiffusion.nets.unet import FourierEmbedding, PositionalEmbedding, _check_choice, linear, mapping_network

__all__ = ["MLP"]


class _MLPBlock(nn.Module):
    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc0 = linear(width, width)
        self.affine = linear(width, width)
        self.dropout = nn.Dropout(dropout)
        self.fc1 = linear(width, width, gain=1e-5)  # the block starts as the identity (EDM-style init)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        r = F.silu(self.fc0(F.silu(self.norm(h))) + self.affine(emb))
        return h + self.fc1(self.dropout(r))


class MLP(nn.Module):
    """``F(x, c_noise, y) -> (N, out_channels)`` for data of shape (N, in_channels); see the module docstring."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        *,
        label_dim: int = 0,
        width: int = 256,
        num_blocks: int = 4,
        noise_channels: int = 64,
        embedding_type: str = "positional",
        fourier_scale: float = 1.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_choice("embedding_type", embedding_type, ("positional", "fourier"))
        self.in_channels = in_channels
        self.out_channels = in_channels if out_channels is None else out_channels
        self.label_dim = label_dim
        if embedding_type == "positional":
            self.map_noise: nn.Module = PositionalEmbedding(noise_channels)
        else:
            # c_noise of the EDM family is O(1) (ln(sigma)/4), so the NCSN++ scale of 16 would alias; default 1.
            self.map_noise = FourierEmbedding(noise_channels, scale=fourier_scale)
        self.map_label = linear(label_dim, noise_channels) if label_dim else None
        self.map_layer0 = linear(noise_channels, width)
        self.map_layer1 = linear(width, width)
        self.input = linear(in_channels, width)
        self.blocks = nn.ModuleList(_MLPBlock(width, dropout) for _ in range(num_blocks))
        self.norm_out = nn.LayerNorm(width)
        self.output = linear(width, self.out_channels, gain=0.0)

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """x: (N, in_channels); noise_labels: (N,) or scalar; class_labels as for ``SongUNet`` (None = no label; labels
        given to a label_dim=0 network are an error). Returns (N, out_channels) in the dtype of ``x``."""
        emb = mapping_network(self, noise_labels, class_labels, x.shape[0])
        h = self.input(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.output(F.silu(self.norm_out(h))).to(x.dtype)

