"""DDPM++ / NCSN++ U-Net (Song et al. 2021, "Score-Based Generative Modeling through SDEs"), in the
configuration EDM (Karras et al. 2022) trains as ``SongUNet``.

Layout for ``channel_mult = (m_0, ..., m_{L-1})`` and base width ``C``::

    emb     = SiLU(W2 SiLU(W1 [PE(c_noise) + W_y y + W_a a]))                  noise (+ class, augment) embedding
    encoder   conv3x3 -> for each level l: [down block (l > 0)] + num_blocks x ResBlock(C m_l)
    middle    ResBlock + attention, ResBlock                                   at the lowest resolution
    decoder   for each level l (reversed): [up block (l < L-1)] + (num_blocks + 1) x ResBlock(cat[h, skip])
    output    conv3x3(SiLU(GroupNorm(h)))                                       zero-ish initialised

Each residual block is ``x' = (x + conv1(drop(SiLU(GN(conv0(SiLU(GN(x))) + A emb))))) / sqrt(2)``, optionally
followed by single-head self-attention ``x'' = (x' + proj(softmax(q k^T / sqrt(d)) v)) / sqrt(2)``.
Resolution changes use a fixed FIR filter ``f f^T / (sum f)^2``: (1,1) is box filtering (DDPM++), (1,3,3,1) is the
bilinear-like filter of StyleGAN2 used by NCSN++.

Encoder variants (progressive growing of the input, as in NCSN++): 'standard' (none), 'skip' (add a 1x1 projection
of the FIR-downsampled input at each level) and 'residual' (merge a strided conv of the running auxiliary image,
scaled by 1/sqrt(2)). Decoder variants: 'standard' (one output head at full resolution) and 'skip' (an output head
per level, upsampled and summed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastdiffusion.errors import UserError

__all__ = ["ConvDown", "SongUNet", "UNetBlock", "PositionalEmbedding", "FourierEmbedding", "GroupNorm", "Resample"]

_SKIP_SCALE = math.sqrt(0.5)  # keeps the variance of a sum of two unit-variance branches at one


# ---------------------------------------------------------------------------------------------------------------------
# Layers


def _init(module: nn.Linear | nn.Conv2d, gain: float = 1.0) -> nn.Module:
    """EDM initialisation: Xavier-uniform weights times ``gain``, zero bias.

    ``gain = 1e-5`` on the last layer of every residual branch makes each block start (almost) as the identity, and
    ``sqrt(0.2)`` on the attention qkv projection keeps the initial attention logits small.
    """
    nn.init.xavier_uniform_(module.weight, gain=gain)
    if module.bias is not None:
        nn.init.zeros_(module.bias)
    return module


def linear(in_features: int, out_features: int, *, bias: bool = True, gain: float = 1.0) -> nn.Linear:
    return _init(nn.Linear(in_features, out_features, bias=bias), gain)


def conv(in_channels: int, out_channels: int, kernel: int, *, gain: float = 1.0) -> nn.Conv2d:
    return _init(nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2), gain)


class GroupNorm(nn.GroupNorm):
    """GroupNorm with ``min(32, C // 4)`` groups, so narrow layers keep at least 4 channels per group.

    Statistics are computed in fp32 whatever the input dtype: under bf16 autocast a mean and variance over a few
    hundred bf16 values lose several bits, which shows up as noise in the denoiser output.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__(max(1, min(32, num_channels // 4)), num_channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        # Eager CUDA takes the per-channel form for inference only: its backward is not measured against the native one.
        eager_inference = x.is_cuda and not (torch.is_grad_enabled() and x.requires_grad)
        if (x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last)
                and (torch.compiler.is_compiling() or eager_inference)):
            return self._forward_nhwc(x)
        y = F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps)
        return y.to(x.dtype)

    def _forward_nhwc(self, x: Tensor) -> Tensor:
        """GroupNorm for channels_last memory from per-channel statistics (eager CUDA inference; any torch.compile).

        The pixel reductions are per channel (``mean_c``, ``var_c`` over H, W), which in NHWC memory read along the
        contiguous channel axis; the group statistics follow from the law of total variance,
        ``mean_g = <mean_c>_g``, ``var_g = <var_c>_g + <(mean_c - mean_g)^2>_g`` (equal pixel counts per channel),
        and the norm is then the per-channel affine ``y = x scale_c + shift_c``. Its backward is the same kind of
        per-channel reduction. A reduction over (pixels, channels of a group) instead strides across memory and is
        slower at the large shapes (docs/results.md, GroupNorm ablation). The CUDA group_norm kernel wants NCHW:
        in eager mode it made an fp32 copy and an NCHW copy of every input, which this form avoids."""
        n, c, h, w = x.shape
        with torch.autocast(x.device.type, enabled=False):  # dtypes are explicit; autocast would copy x to fp32
            if torch.compiler.is_compiling():  # Inductor fuses the fp32 cast into the two-pass reduction
                var_c, mean_c = torch.var_mean(x.float(), dim=(2, 3), correction=0)
            else:  # eager: reductions that read x in its own dtype and accumulate in fp32, so no fp32 copy of x
                acc = torch.promote_types(x.dtype, torch.float32)
                mean_c = x.mean((2, 3), dtype=acc)
                mean_sq_c = torch.linalg.vector_norm(x, dim=(2, 3), dtype=acc).square() / (h * w)
                var_c = (mean_sq_c - mean_c.square()).clamp_min(0)
            mean_c, var_c = mean_c.view(n, self.num_groups, -1), var_c.view(n, self.num_groups, -1)
            mean_g = mean_c.mean(-1, keepdim=True)
            var_g = var_c.mean(-1, keepdim=True) + (mean_c - mean_g).square().mean(-1, keepdim=True)
            scale = torch.rsqrt(var_g + self.eps) * self.weight.float().view(self.num_groups, -1)
            shift = self.bias.float().view(self.num_groups, -1) - mean_g * scale
            # x is promoted to fp32 inside the one elementwise kernel
            return torch.addcmul(shift.view(n, c, 1, 1), x, scale.view(n, c, 1, 1)).to(x.dtype)


class Resample(nn.Module):
    """Up- or down-sampling by 2 with the separable FIR filter ``K = f f^T / (sum f)^2``, applied per channel.

    down: ``y = (x * K)[::2, ::2]``; up: transposed convolution with ``4 K`` (zero insertion then filtering; the 4
    restores the mean lost to the inserted zeros). The filter is fixed, so it is a non-persistent buffer: it is
    rebuilt from the config rather than stored in checkpoints.

    The box filter ``f = (1, 1)`` (DDPM++) makes these exactly 2x2 average pooling and nearest-neighbour upsampling,
    which run as such: a depthwise convolution is a slow cuDNN kernel that torch.compile cannot fuse, the pooling forms
    are plain memory ops it fuses into the neighbouring norm and activation.
    """

    def __init__(self, channels: int, mode: str, resample_filter: Sequence[float] = (1, 1)) -> None:
        super().__init__()
        if mode not in ("up", "down"):
            raise ValueError(f"Resample mode must be 'up' or 'down', got {mode!r}")
        f = torch.as_tensor(resample_filter, dtype=torch.float32)
        kernel = torch.outer(f, f) / f.sum().square()
        self.mode = mode
        self.box = len(resample_filter) == 2 and resample_filter[0] == resample_filter[1]
        self.padding = (len(f) - 1) // 2
        self.register_buffer("kernel", kernel.expand(channels, 1, *kernel.shape).contiguous(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.box and self.mode == "down":
            return F.avg_pool2d(x, 2)
        if self.box:
            if torch.compiler.is_compiling() and x.is_contiguous(memory_format=torch.channels_last):
                return upsample_nearest_nhwc(x)
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        k = self.kernel.to(x.dtype)
        if self.mode == "down":
            return F.conv2d(x, k, stride=2, padding=self.padding, groups=x.shape[1])
        return F.conv_transpose2d(x, k * 4, stride=2, padding=self.padding, groups=x.shape[1])


class ConvDown(nn.Sequential):
    """NCSN++'s down-sampling convolution, ``y = (conv3x3(x; W) * K)[::2, ::2] + b``, with the 3x3 convolution
    zero-padded by 1 + pad(K) so the filter sees its full output at the border (EDM's ``fused_resample``; filtering a
    zero-padded conv3x3 output instead changes the border pixels). Children [conv, Resample] hold W, b and K."""

    def __init__(self, in_channels: int, out_channels: int, resample_filter: Sequence[float]) -> None:
        super().__init__(conv(in_channels, out_channels, 3), Resample(out_channels, "down", resample_filter))

    def forward(self, x: Tensor) -> Tensor:
        conv3, down = self[0], self[1]
        y = F.conv2d(x, conv3.weight.to(x.dtype), padding=1 + down.padding)
        y = F.conv2d(y, down.kernel.to(y.dtype), stride=2, groups=y.shape[1])
        return y + conv3.bias.to(y.dtype)[:, None, None]


def upsample_nearest_nhwc(x: Tensor) -> Tensor:
    """Nearest-neighbour 2x upsampling of a channels_last tensor as a broadcast, ``y[2i + a, 2j + b] = x[i, j]``.

    Same values as ``F.interpolate(x, scale_factor=2)``; written so for torch.compile, whose backward of this form is a
    2x2 sum, where it lowers interpolate's backward to an atomic scatter-add, several times slower (docs/results.md)."""
    n, c, h, w = x.shape
    y = x.permute(0, 2, 3, 1)[:, :, None, :, None, :].expand(n, h, 2, w, 2, c).reshape(n, 2 * h, 2 * w, c)
    return y.permute(0, 3, 1, 2)


class PositionalEmbedding(nn.Module):
    """Transformer sinusoidal embedding of a scalar c (Vaswani et al. 2017; DDPM):
    ``[sin(c w_i), cos(c w_i)]`` with ``w_i = (1 / max_positions)^(i / (C/2 - 1))``, i = 0 .. C/2 - 1, or
    ``i / (C/2)`` with ``endpoint=False`` (ADM's)."""

    def __init__(self, num_channels: int, max_positions: int = 10_000, endpoint: bool = True) -> None:
        super().__init__()
        half = num_channels // 2
        denominator = max(half - 1, 1) if endpoint else half
        freqs = (1 / max_positions) ** (torch.arange(half, dtype=torch.float32) / denominator)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, c: Tensor) -> Tensor:
        arg = c.float()[:, None] * self.freqs[None, :]  # fp32: c may be ~1000 (VP) and bf16 would round it
        return torch.cat([arg.sin(), arg.cos()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features of a scalar c (Tancik et al. 2020; NCSN++):
    ``[sin(2 pi f_i c), cos(2 pi f_i c)]`` with fixed ``f_i ~ N(0, scale^2)``. The frequencies are random, so they
    are a persistent buffer: a checkpoint carries them."""

    def __init__(self, num_channels: int, scale: float = 16.0) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, c: Tensor) -> Tensor:
        arg = c.float()[:, None] * (2 * math.pi * self.freqs.float())[None, :]
        return torch.cat([arg.sin(), arg.cos()], dim=1)


# ---------------------------------------------------------------------------------------------------------------------
# Blocks


class UNetBlock(nn.Module):
    """Residual block with optional resampling and self-attention (see module docstring).

    adaptive_scale=False (DDPM++/NCSN++): the embedding is a per-channel shift, ``GN(h + A emb)``.
    adaptive_scale=True (ADM-style FiLM): ``[s, b] = A emb``, ``GN(h) (1 + s) + b``.
    ADM's blocks also differ in ``eps`` (1e-5), ``skip_scale`` (1: the sums are not rescaled) and
    ``resample_proj=False`` (a resampling block of unchanged width resamples its identity path without a 1x1 conv).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        *,
        up: bool = False,
        down: bool = False,
        attention: bool = False,
        num_heads: int = 1,
        dropout: float = 0.0,
        resample_filter: Sequence[float] = (1, 1),
        adaptive_scale: bool = False,
        eps: float = 1e-6,
        skip_scale: float = _SKIP_SCALE,
        resample_proj: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.adaptive_scale, self.skip_scale = adaptive_scale, skip_scale
        self.resample = Resample(in_channels, "up" if up else "down", resample_filter) if up or down else None
        self.norm0 = GroupNorm(in_channels, eps)
        self.conv0 = conv(in_channels, out_channels, 3)
        self.affine = linear(emb_channels, out_channels * (2 if adaptive_scale else 1))
        self.norm1 = GroupNorm(out_channels, eps)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = conv(out_channels, out_channels, 3, gain=1e-5)
        # The identity path needs a 1x1 projection whenever the width changes, and (resample_proj) when it resamples.
        project = in_channels != out_channels or (resample_proj and (up or down))
        self.skip = conv(in_channels, out_channels, 1) if project else None

        self.num_heads = num_heads if attention else 0
        if self.num_heads:
            if out_channels % num_heads:
                raise UserError(f"attention: {out_channels} channels do not split into {num_heads} heads")
            self.norm2 = GroupNorm(out_channels, eps)
            self.qkv = conv(out_channels, out_channels * 3, 1, gain=math.sqrt(0.2))
            self.proj = conv(out_channels, out_channels, 1, gain=1e-5)

    def _resample(self, x: Tensor) -> Tensor:
        return x if self.resample is None else self.resample(x)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv0(self._resample(F.silu(self.norm0(x))))
        params = self.affine(emb)[:, :, None, None].to(h.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        else:
            h = F.silu(self.norm1(h + params))
        h = self.conv1(self.dropout(h))
        identity = self._resample(x)
        if self.skip is not None:
            identity = self.skip(identity)
        x = (h + identity) * self.skip_scale

        if self.num_heads:
            n, c, height, width = x.shape
            # (N, 3C, H, W) -> 3 x (N, heads, HW, C/heads), the layout scaled_dot_product_attention expects.
            qkv = self.qkv(self.norm2(x)).reshape(n, 3, self.num_heads, c // self.num_heads, height * width)
            q, k, v = qkv.transpose(-1, -2).unbind(1)
            a = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C/heads)) v
            a = a.transpose(-1, -2).reshape(n, c, height, width)
            x = (self.proj(a) + x) * self.skip_scale
        return x


class _EncoderLevel(nn.Module):
    """One resolution of the encoder: optional down block and auxiliary-input path, then ``num_blocks`` blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.down: UNetBlock | None = None
        self.aux_down: Resample | None = None  # 'skip' encoder: FIR-downsample the input image
        self.aux_skip: nn.Conv2d | None = None  # 'skip' encoder: 1x1 projection added to h
        self.aux_residual: ConvDown | None = None  # 'residual' encoder: conv3x3 and FIR-downsample in one
        self.blocks = nn.ModuleList()


class _DecoderLevel(nn.Module):
    """One resolution of the decoder: middle blocks or an up block, ``num_blocks + 1`` blocks, optional output head."""

    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.ModuleList()  # [middle+attention, middle] at the lowest level, else [up block]
        self.blocks = nn.ModuleList()
        self.aux_up: Resample | None = None  # 'skip' decoder: FIR-upsample the running output image
        self.aux_norm: GroupNorm | None = None
        self.aux_conv: nn.Conv2d | None = None


# ---------------------------------------------------------------------------------------------------------------------
# Network


class SongUNet(nn.Module):
    """DDPM++ / NCSN++ U-Net: ``F(x, c_noise, y) -> (N, out_channels, H, W)``; see the module docstring.

    Defaults are EDM's DDPM++ CIFAR-10 network except dropout (0.10; EDM trains CIFAR-10 with 0.13). NCSN++ is
    ``embedding_type='fourier', channel_mult_noise=2, encoder_type='residual', resample_filter=(1, 3, 3, 1)``.
    """

    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int | None = None,
        *,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 128,
        channel_mult: Sequence[int] = (2, 2, 2),
        channel_mult_emb: int = 4,
        num_blocks: int = 4,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.10,
        label_dropout: float = 0.0,
        embedding_type: str = "positional",
        channel_mult_noise: int = 1,
        encoder_type: str = "standard",
        decoder_type: str = "standard",
        resample_filter: Sequence[float] = (1, 1),
        adaptive_scale: bool = False,
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        _check_choice("embedding_type", embedding_type, ("positional", "fourier"))
        _check_choice("encoder_type", encoder_type, ("standard", "skip", "residual"))
        _check_choice("decoder_type", decoder_type, ("standard", "skip"))
        num_levels = len(channel_mult)
        if num_levels < 1 or img_resolution % (1 << (num_levels - 1)):
            raise UserError(
                f"img_resolution={img_resolution} must be divisible by 2^(len(channel_mult)-1) = "
                f"{1 << max(num_levels - 1, 0)} (channel_mult={tuple(channel_mult)})"
            )
        if len(resample_filter) % 2:
            raise UserError(f"resample_filter={tuple(resample_filter)} must have even length, e.g. (1, 3, 3, 1)")

        self.img_resolution, self.in_channels, self.out_channels = img_resolution, in_channels, out_channels
        self.label_dim, self.augment_dim, self.label_dropout = label_dim, augment_dim, label_dropout
        self.encoder_type, self.decoder_type = encoder_type, decoder_type
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        block = dict(emb_channels=emb_channels, dropout=dropout, resample_filter=resample_filter,
                     adaptive_scale=adaptive_scale)  # fmt: skip

        # Mapping network: noise level (+ class label, + augmentation label) -> embedding.
        if embedding_type == "positional":
            self.map_noise: nn.Module = PositionalEmbedding(noise_channels)
        else:
            self.map_noise = FourierEmbedding(noise_channels)
        self.map_label = linear(label_dim, noise_channels) if label_dim else None
        self.map_augment = linear(augment_dim, noise_channels, bias=False) if augment_dim else None
        self.map_layer0 = linear(noise_channels, emb_channels)
        self.map_layer1 = linear(emb_channels, emb_channels)

        # Encoder. skip_channels records the width of every tensor pushed on the skip stack.
        self.conv_in = conv(in_channels, model_channels, 3)
        skip_channels = [model_channels]
        c, c_aux = model_channels, in_channels
        self.encoder = nn.ModuleList()
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            enc = _EncoderLevel()
            if level > 0:
                enc.down = UNetBlock(c, c, down=True, **block)
                if encoder_type == "skip":
                    enc.aux_down = Resample(c_aux, "down", resample_filter)
                    enc.aux_skip = conv(c_aux, c, 1)
                elif encoder_type == "residual":
                    # NCSN++'s progressive input: a 3x3 conv at the finer resolution, then the FIR downsample.
                    enc.aux_residual = ConvDown(c_aux, c, resample_filter)
                    c_aux = c
                skip_channels.append(c)
            for _ in range(num_blocks):
                enc.blocks.append(UNetBlock(c, model_channels * mult, attention=res in attn_resolutions, **block))
                c = model_channels * mult
                skip_channels.append(c)
            self.encoder.append(enc)

        # Decoder, stored in execution order (lowest resolution first).
        self.decoder = nn.ModuleList()
        for level in reversed(range(num_levels)):
            res, mult = img_resolution >> level, channel_mult[level]
            dec = _DecoderLevel()
            if level == num_levels - 1:
                dec.pre.append(UNetBlock(c, c, attention=True, **block))
                dec.pre.append(UNetBlock(c, c, **block))
            else:
                dec.pre.append(UNetBlock(c, c, up=True, **block))
            for idx in range(num_blocks + 1):
                attention = idx == num_blocks and res in attn_resolutions
                dec.blocks.append(UNetBlock(c + skip_channels.pop(), model_channels * mult, attention=attention,
                                            **block))  # fmt: skip
                c = model_channels * mult
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < num_levels - 1:
                    dec.aux_up = Resample(out_channels, "up", resample_filter)
                dec.aux_norm = GroupNorm(c)
                dec.aux_conv = conv(c, out_channels, 3, gain=1e-5)
            self.decoder.append(dec)
        assert not skip_channels

    def forward(
        self,
        x: Tensor,
        noise_labels: Tensor,
        class_labels: Tensor | None = None,
        augment_labels: Tensor | None = None,
    ) -> Tensor:
        """x: (N, in_channels, H, W); noise_labels: (N,) or scalar c_noise; class_labels: (N, label_dim) one-hot /
        soft labels or (N,) integer classes, None = unconditional (all-zero label). Returns (N, out_channels, H, W)
        in the dtype of ``x``."""
        aug = None if self.map_augment is None or augment_labels is None else self.map_augment(augment_labels.float())
        emb = mapping_network(self, noise_labels, class_labels, x.shape[0], self.label_dropout, aug)

        h = self.conv_in(x)
        skips, aux = [h], x
        for enc in self.encoder:
            if enc.down is not None:
                h = enc.down(h, emb)
                if enc.aux_skip is not None:
                    aux = enc.aux_down(aux)
                    h = h + enc.aux_skip(aux)
                elif enc.aux_residual is not None:
                    h = aux = (h + enc.aux_residual(aux)) * _SKIP_SCALE
                skips.append(h)
            for block in enc.blocks:
                h = block(h, emb)
                skips.append(h)

        out = None
        for dec in self.decoder:
            for block in dec.pre:
                h = block(h, emb)
            for block in dec.blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if dec.aux_conv is not None:
                y = dec.aux_conv(F.silu(dec.aux_norm(h)))
                out = y if out is None else y + dec.aux_up(out)
        return out.to(x.dtype)


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise UserError(f"{name}={value!r} is not valid; choose one of {', '.join(choices)}")


def mapping_network(net: nn.Module, noise_labels: Tensor, class_labels: Tensor | None, n: int,
                    label_dropout: float = 0.0, extra: Tensor | None = None) -> Tensor:
    """EDM's mapping network, shared by every backbone that has ``map_noise``, ``map_label`` (or None), ``label_dim``,
    ``map_layer0`` and ``map_layer1``: ``emb = SiLU(L1(SiLU(L0(e(c_noise) + W_y sqrt(K) y + extra))))``.

    ``y`` is the (N, K) label matrix (one-hot * sqrt(K) has unit RMS), dropped per example with ``label_dropout`` in
    training; labels given to a network built with label_dim=0 are an error.
    """
    emb = net.map_noise(noise_labels.reshape(-1).expand(n))
    if net.map_label is not None:
        y = _labels(class_labels, n, net.label_dim, emb)
        if net.training and label_dropout:
            y = y * (torch.rand(n, 1, device=y.device) >= label_dropout).to(y.dtype)
        emb = emb + net.map_label(y * math.sqrt(net.label_dim))
    elif class_labels is not None:
        raise ValueError("class_labels given to a network built with label_dim=0")
    if extra is not None:
        emb = emb + extra.to(emb.dtype)
    return F.silu(net.map_layer1(F.silu(net.map_layer0(emb))))


def _labels(class_labels: Tensor | None, n: int, label_dim: int, like: Tensor) -> Tensor:
    """Class labels as an (N, label_dim) float matrix: integer classes are one-hot encoded, None is all zeros."""
    if class_labels is None:
        return like.new_zeros(n, label_dim)
    if class_labels.ndim == 1 and not class_labels.is_floating_point():
        return F.one_hot(class_labels.long(), label_dim).to(like.dtype)
    return class_labels.to(like.dtype).reshape(n, label_dim)
