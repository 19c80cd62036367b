"""ADM U-Net (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis"), in the configuration EDM
(Karras et al. 2022) trains and ships for ImageNet-64 as ``DhariwalUNet``.

Layout for ``channel_mult = (m_0, ..., m_{L-1})`` and base width ``C``::

    emb     = SiLU(L1(SiLU(L0(PE(c_noise) + W_a a))) + W_y y)                  noise (+ augment) and class embedding
    encoder   conv3x3 to C m_0 -> for each level l: [down block (l > 0)] + num_blocks x ResBlock(C m_l)
    middle    ResBlock + attention, ResBlock                                   at the lowest resolution
    decoder   for each level l (reversed): [up block (l < L-1)] + (num_blocks + 1) x ResBlock(cat[h, skip])
    output    conv3x3(SiLU(GroupNorm(h)))

It differs from DDPM++ (``SongUNet``) in: FiLM conditioning (``adaptive_scale``), multi-head attention with 64
channels per head (none where a block has fewer than 64 channels) at every block of the listed resolutions, GroupNorm
eps 1e-5, unscaled residual sums, resampling blocks without a 1x1 projection of the identity path, the positional
embedding's frequencies ``(1 / 10^4)^(i / (C/2))`` of width C, and the class label added after the mapping layers
without bias or sqrt(K) scaling.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastdiffusion.errors import UserError
from fastdiffusion.nets.unet import (
    GroupNorm,
    PositionalEmbedding,
    UNetBlock,
    _DecoderLevel,
    _EncoderLevel,
    _labels,
    conv,
    linear,
)

__all__ = ["DhariwalUNet"]

CHANNELS_PER_HEAD = 64


class DhariwalUNet(nn.Module):
    """ADM U-Net: ``F(x, c_noise, y) -> (N, out_channels, H, W)``; see the module docstring. Defaults are EDM's
    ImageNet-64 network."""

    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int | None = None,
        *,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 192,
        channel_mult: Sequence[int] = (1, 2, 3, 4),
        channel_mult_emb: int = 4,
        num_blocks: int = 3,
        attn_resolutions: Sequence[int] = (32, 16, 8),
        dropout: float = 0.10,
        label_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        num_levels = len(channel_mult)
        if num_levels < 1 or img_resolution % (1 << (num_levels - 1)):
            raise UserError(f"img_resolution={img_resolution} must be divisible by 2^(len(channel_mult)-1) = "
                            f"{1 << max(num_levels - 1, 0)} (channel_mult={tuple(channel_mult)})")
        self.img_resolution, self.in_channels, self.out_channels = img_resolution, in_channels, out_channels
        self.label_dim, self.augment_dim, self.label_dropout = label_dim, augment_dim, label_dropout
        emb_channels = model_channels * channel_mult_emb

        def block(cin: int, cout: int, attention: bool = False, **kw: bool) -> UNetBlock:
            heads = cout // CHANNELS_PER_HEAD if attention else 0
            return UNetBlock(cin, cout, emb_channels, attention=heads > 0, num_heads=max(heads, 1), dropout=dropout,
                             adaptive_scale=True, eps=1e-5, skip_scale=1.0, resample_proj=False, **kw)

        self.map_noise = PositionalEmbedding(model_channels, endpoint=False)
        self.map_augment = linear(augment_dim, model_channels, bias=False) if augment_dim else None
        self.map_layer0 = linear(model_channels, emb_channels)
        self.map_layer1 = linear(emb_channels, emb_channels)
        self.map_label = linear(label_dim, emb_channels, bias=False) if label_dim else None

        c = model_channels * channel_mult[0]
        self.conv_in = conv(in_channels, c, 3)
        skip_channels = [c]
        self.encoder = nn.ModuleList()
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            enc = _EncoderLevel()
            if level > 0:
                enc.down = block(c, c, down=True)
                skip_channels.append(c)
            for _ in range(num_blocks):
                enc.blocks.append(block(c, model_channels * mult, res in attn_resolutions))
                c = model_channels * mult
                skip_channels.append(c)
            self.encoder.append(enc)

        self.decoder = nn.ModuleList()
        for level in reversed(range(num_levels)):
            res, mult = img_resolution >> level, channel_mult[level]
            dec = _DecoderLevel()
            if level == num_levels - 1:
                dec.pre.extend([block(c, c, attention=True), block(c, c)])
            else:
                dec.pre.append(block(c, c, up=True))
            for _ in range(num_blocks + 1):
                dec.blocks.append(block(c + skip_channels.pop(), model_channels * mult, res in attn_resolutions))
                c = model_channels * mult
            self.decoder.append(dec)
        assert not skip_channels
        self.out_norm = GroupNorm(c, eps=1e-5)
        self.out_conv = conv(c, out_channels, 3, gain=1e-5)

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None,
                augment_labels: Tensor | None = None) -> Tensor:
        """As ``SongUNet.forward``: x (N, in_channels, H, W), noise_labels (N,) or scalar, class_labels (N, label_dim)
        or (N,) integers or None (all-zero label)."""
        n = x.shape[0]
        emb = self.map_noise(noise_labels.reshape(-1).expand(n))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels.float())
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None:
            y = _labels(class_labels, n, self.label_dim, emb)
            if self.training and self.label_dropout:
                y = y * (torch.rand(n, 1, device=y.device) >= self.label_dropout).to(y.dtype)
            emb = emb + self.map_label(y)
        elif class_labels is not None:
            raise ValueError("class_labels given to a network built with label_dim=0")
        emb = F.silu(emb)

        h = self.conv_in(x)
        skips = [h]
        for enc in self.encoder:
            for b in ([enc.down] if enc.down is not None else []) + list(enc.blocks):
                h = b(h, emb)
                skips.append(h)
        for dec in self.decoder:
            for b in dec.pre:
                h = b(h, emb)
            for b in dec.blocks:
                h = b(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out_conv(F.silu(self.out_norm(h))).to(x.dtype)
