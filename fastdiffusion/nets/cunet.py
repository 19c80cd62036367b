"""Continuous U-Net ("cU-Net"; Calvo-Ordoñez et al. 2024, "The Missing U for Efficient Diffusion Models"): a U-Net
whose levels are neural-ODE blocks, one weight-tied vector field per level integrated by a fixed-step solver.

Layout for ``channel_mult = (m_0, ..., m_{L-1})``, base width ``C`` and augmentation width ``A``::

    emb     = SiLU(W2 SiLU(W1 [PE(c_noise) + W_y y]))                          noise (+ class) embedding
    stem      conv3x3: in_channels -> C m_0
    encoder   level l: [FIR down /2, 1x1 conv -> C m_l] (l > 0), ODEBlock, [attention], push skip
    middle    ODEBlock, [attention]                                            at the lowest resolution
    decoder   level l (reversed): [FIR up x2] (l < L-1), 1x1 conv(cat[h, skip]) -> C m_l, ODEBlock, [attention]
    output    conv3x3(SiLU(GN(h)))                                             zero-ish initialised

An ``ODEBlock`` on ``h`` with ``c = C m_l`` channels appends ``a = A m_l`` zero channels (augmented neural ODE,
Dupont et al. 2019), integrates, and drops them again::

    y(0) = [h, 0_a],    dy/dt = f(y, t; emb)  for t in [0, 1],    h' = y(1)[:c]
    f(y, t; emb) = conv1(SiLU(GN(conv0 y) (1 + s(t)) + b(t)))
    [s(t), b(t)] = A_f emb + t u

so the diffusion noise level enters every evaluation of f through the FiLM scale/shift, and the ODE time t through
the per-channel vector ``u`` (the constant-time-channel input of Chen et al. 2018 folded into the bias; zero at
init). ``conv1`` starts near zero, so every block starts as the identity. Attention blocks are residual:
``h + proj(SDPA(W_q GN(h), W_k GN(h), W_v GN(h)))``.

Solvers are fixed-step explicit Runge-Kutta methods with ``n`` steps of ``dt = 1 / n``::

    k_i = f(t_k + c_i dt, y_k + dt sum_j a_ij k_j),    y_{k+1} = y_k + dt sum_i b_i k_i

(euler: 1 evaluation per step, midpoint: 2, rk4: 4). Training backpropagates through the solver by default. With
``adjoint=True`` the gradient comes from the adjoint ODE instead (Chen et al. 2018), solved backward from t = 1 to 0
with the same method and steps on the augmented state (y, a, g)::

    dy/dt = f,    da/dt = -a^T df/dy,    dg/dt = -a^T df/d(theta, film),    a(1) = dL/dy(1),  g(1) = 0

which keeps only y(1) instead of every stage, at the price of re-evaluating f at every backward stage and of
gradients that match backpropagation only up to the solver's error (y is re-solved backward, not stored).

Differences from the public research code (``reference/cunet.md``): the noise level is actually fed into the vector
field, the ODE is ``dy/dt = f`` rather than ``f + y``, and attention keeps its residual.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastdiffusion.errors import UserError
from fastdiffusion.nets.unet import (
    GroupNorm,
    PositionalEmbedding,
    Resample,
    _check_choice,
    conv,
    linear,
    mapping_network,
)

__all__ = ["ContinuousUNet", "ODEBlock", "VectorField", "Attention", "TABLEAUS", "odeint"]

State = tuple[Tensor, ...]


# ---------------------------------------------------------------------------------------------------------------------
# Fixed-step Runge-Kutta solvers


@dataclass(frozen=True)
class Tableau:
    """Butcher tableau of an explicit Runge-Kutta method: ``a[i - 1]`` holds the a_ij (j < i) of stage i >= 1."""

    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]
    order: int


TABLEAUS: dict[str, Tableau] = {
    "euler": Tableau(a=(), b=(1.0,), c=(0.0,), order=1),
    "midpoint": Tableau(a=((0.5,),), b=(0.0, 1.0), c=(0.0, 0.5), order=2),
    "rk4": Tableau(a=((0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), b=(1 / 6, 1 / 3, 1 / 3, 1 / 6), c=(0.0, 0.5, 0.5, 1.0),
                   order=4),
}  # fmt: skip


def _combine(y: State, dt: float, coeffs: Sequence[float], ks: Sequence[State]) -> State:
    """``y + dt sum_i coeffs_i ks_i``, element-wise over the tuple; zero coefficients cost nothing."""
    terms = [(c, k) for c, k in zip(coeffs, ks, strict=True) if c]
    out = []
    for j, yj in enumerate(y):
        for c, k in terms:
            yj = yj.add(k[j], alpha=dt * c)
        out.append(yj)
    return tuple(out)


def _odeint_state(f: Callable[[float, State], State], y0: State, method: str, steps: int, t0: float,
                  t1: float) -> State:  # fmt: skip
    tab = TABLEAUS[method]
    dt = (t1 - t0) / steps
    y = y0
    for n in range(steps):
        t = t0 + n * dt
        ks: list[State] = []
        for i, c in enumerate(tab.c):
            ks.append(f(t + c * dt, y if i == 0 else _combine(y, dt, tab.a[i - 1], ks)))
        y = _combine(y, dt, tab.b, ks)
    return y


def odeint(f: Callable, y0: Tensor | State, *, method: str = "rk4", steps: int = 1, t0: float = 0.0,
           t1: float = 1.0) -> Tensor | State:  # fmt: skip
    """Solve ``dy/dt = f(t, y)`` from ``t0`` to ``t1`` (``t1 < t0`` runs backward) with ``steps`` fixed steps of
    ``method`` (see ``TABLEAUS``); ``y`` is a tensor or a tuple of tensors (then ``f`` returns a tuple too).
    ``f`` is called ``steps * stages`` times; autograd sees every call (backpropagation through the solver)."""
    _check_choice("solver", method, tuple(TABLEAUS))
    if steps < 1:
        raise UserError(f"solver_steps must be >= 1, got {steps}")
    if isinstance(y0, Tensor):
        return _odeint_state(lambda t, y: (f(t, y[0]),), (y0,), method, steps, t0, t1)[0]
    return _odeint_state(f, tuple(y0), method, steps, t0, t1)


class _AdjointSolve(torch.autograd.Function):
    """``y(1) = odeint(field(t, y, *cond))`` whose backward solves the adjoint ODE (module docstring) instead of
    storing the forward stages. Inputs after ``y0``: the ``cond`` tensors, then the field's parameters."""

    @staticmethod
    def forward(ctx, field: nn.Module, method: str, steps: int, n_cond: int, y0: Tensor, *tensors: Tensor) -> Tensor:
        cond = tensors[:n_cond]
        with torch.no_grad():
            y1 = odeint(lambda t, y: field(t, y, *cond), y0, method=method, steps=steps)
        ctx.field, ctx.method, ctx.steps, ctx.n_cond = field, method, steps, n_cond
        ctx.params = tensors[n_cond:]
        device = y0.device.type
        ctx.autocast = (device, torch.get_autocast_dtype(device), torch.is_autocast_enabled(device))
        ctx.save_for_backward(y1, *cond)
        return y1

    @staticmethod
    def backward(ctx, grad_y1: Tensor) -> tuple[Tensor | None, ...]:
        y1, *cond = ctx.saved_tensors
        field, params = ctx.field, ctx.params
        needs_cond, needs_params = ctx.needs_input_grad[5 : 5 + ctx.n_cond], ctx.needs_input_grad[5 + ctx.n_cond :]
        cond = [c.detach().requires_grad_(need) for c, need in zip(cond, needs_cond, strict=True)]
        params_wrt = [p for p, need in zip(params, needs_params, strict=True) if need]
        wrt = [c for c in cond if c.requires_grad] + params_wrt
        device, dtype, enabled = ctx.autocast

        def augmented(t: float, state: State) -> State:
            y, a = state[0], state[1]
            with torch.enable_grad(), torch.autocast(device, dtype, enabled=enabled):
                y = y.detach().requires_grad_(True)
                fy = field(t, y, *cond)
                vjps = torch.autograd.grad(fy, [y, *wrt], a.to(fy.dtype), allow_unused=True)
            vjps = [torch.zeros_like(x) if v is None else v for v, x in zip(vjps, [y, *wrt], strict=True)]
            return (fy.detach(), *(-v for v in vjps))

        state = (y1, grad_y1, *(torch.zeros_like(x) for x in wrt))
        _, a0, *grads = odeint(augmented, state, method=ctx.method, steps=ctx.steps, t0=1.0, t1=0.0)
        it = iter(grads)
        out = [next(it) if c.requires_grad else None for c in cond]
        out += [next(it) if need else None for need in needs_params]
        return (None, None, None, None, a0, *out)


# ---------------------------------------------------------------------------------------------------------------------
# Layers


class _Norm(GroupNorm):
    """``unet.GroupNorm`` (fp32 statistics) with the most groups <= min(32, C / 4) that divide C, so any width works."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        groups = max(1, min(32, num_channels // 4))
        while num_channels % groups:
            groups -= 1
        nn.GroupNorm.__init__(self, groups, num_channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float64:  # keep float64 end to end (solver-order tests); the parent computes in fp32
            return F.group_norm(x, self.num_groups, self.weight.double(), self.bias.double(), self.eps)
        return super().forward(x)


class VectorField(nn.Module):
    """``f(y, t; film) = conv1(SiLU(GN(conv0 y) (1 + s) + b) * mask)`` with ``[s, b] = film + t u``.

    ``film`` is the (N, 2 width) projection of the noise embedding, computed once per solve by the owning
    ``ODEBlock``; ``mask`` is an optional dropout mask, also fixed for the whole solve so the ODE stays
    deterministic. The same weights serve every evaluation (weight tying across solver stages and steps).

    The state is not normalised before ``conv0``: a GroupNorm group holding only the zero-initialised augmentation
    channels would divide their O(dt) values by sqrt(eps), a near-discontinuity of f that cost RK4 its order (the
    forward-backward round trip converged at order 1). Normalising after ``conv0``, which mixes all channels, keeps
    f smooth and still bounded: GN makes it invariant to the scale of y.
    """

    def __init__(self, channels: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = channels if hidden is None else hidden
        self.conv0 = conv(channels, hidden, 3)
        self.norm1 = _Norm(hidden)
        self.time = nn.Parameter(torch.zeros(2 * hidden))  # u: the ODE time's per-channel scale/shift
        self.conv1 = conv(hidden, channels, 3, gain=1e-5)

    def forward(self, t: float, y: Tensor, film: Tensor, mask: Tensor | None = None) -> Tensor:
        r = self.conv0(y)
        params = (film + t * self.time)[:, :, None, None].to(r.dtype)
        scale, shift = params.chunk(2, dim=1)
        r = F.silu(torch.addcmul(shift, self.norm1(r), scale + 1))
        if mask is not None:
            r = r * mask.to(r.dtype)
        return self.conv1(r)


def _zeros_like_layout(h: Tensor, channels: int, dtype: torch.dtype) -> Tensor:
    n, _, height, width = h.shape
    fmt = torch.channels_last if h.shape[1] > 1 and h.is_contiguous(memory_format=torch.channels_last) \
        else torch.contiguous_format  # fmt: skip
    return torch.empty(n, channels, height, width, dtype=dtype, device=h.device, memory_format=fmt).zero_()


class ODEBlock(nn.Module):
    """``h -> y(1)[:C]`` with ``y(0) = [h, 0_A]`` and ``dy/dt = f(y, t; emb)`` over t in [0, 1] (module docstring).

    The ODE state is kept in (at least) fp32 whatever the autocast dtype: f runs in bf16 under autocast, the sums of
    the solver do not. ``method``, ``steps`` and ``adjoint`` are plain attributes and may be changed after building.
    """

    def __init__(self, channels: int, augment: int, emb_channels: int, *, method: str = "rk4", steps: int = 1,
                 adjoint: bool = False, dropout: float = 0.0) -> None:  # fmt: skip
        super().__init__()
        _check_choice("solver", method, tuple(TABLEAUS))
        if steps < 1:
            raise UserError(f"solver_steps must be >= 1, got {steps}")
        self.channels, self.augment = channels, augment
        self.method, self.steps, self.adjoint, self.dropout = method, steps, adjoint, dropout
        width = channels + augment
        self.field = VectorField(width)
        self.affine = linear(emb_channels, 2 * width)  # A_f: noise embedding -> FiLM scale/shift of f

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        dtype = torch.promote_types(h.dtype, torch.float32)
        y0 = h.to(dtype)
        if self.augment:
            y0 = torch.cat([y0, _zeros_like_layout(h, self.augment, dtype)], dim=1)
        cond = [self.affine(emb)]
        if self.training and self.dropout > 0:
            keep = torch.rand(h.shape[0], y0.shape[1], *h.shape[2:], device=h.device) >= self.dropout
            cond.append(keep.to(dtype) / (1 - self.dropout))
        if self.adjoint and torch.is_grad_enabled():
            y1 = _AdjointSolve.apply(self.field, self.method, self.steps, len(cond), y0, *cond,
                                     *self.field.parameters())  # fmt: skip
        else:
            y1 = odeint(lambda t, y: self.field(t, y, *cond), y0, method=self.method, steps=self.steps)
        return y1[:, : self.channels].to(h.dtype)

    @property
    def evaluations(self) -> int:
        """Calls of f per forward pass."""
        return self.steps * len(TABLEAUS[self.method].c)


class Attention(nn.Module):
    """Residual multi-head self-attention over pixels: ``h + proj(SDPA(q, k, v))``, ``[q, k, v] = W_qkv GN(h)``."""

    def __init__(self, channels: int, num_heads: int = 1) -> None:
        super().__init__()
        if channels % num_heads:
            raise UserError(f"attention: {channels} channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.norm = _Norm(channels)
        self.qkv = conv(channels, 3 * channels, 1, gain=math.sqrt(0.2))
        self.proj = conv(channels, channels, 1, gain=1e-5)

    def forward(self, h: Tensor) -> Tensor:
        n, c, height, width = h.shape
        qkv = self.qkv(self.norm(h)).reshape(n, 3, self.num_heads, c // self.num_heads, height * width)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (N, heads, HW, C / heads)
        a = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(n, c, height, width)
        return h + self.proj(a)


class _Level(nn.Module):
    """One resolution of the encoder or decoder: an optional 1x1 transition, an ODE block, optional attention."""

    def __init__(self, transition: nn.Module | None, block: ODEBlock, attention: Attention | None) -> None:
        super().__init__()
        self.transition, self.block, self.attention = transition, block, attention

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        if self.transition is not None:
            h = self.transition(h)
        h = self.block(h, emb)
        return h if self.attention is None else self.attention(h)


# ---------------------------------------------------------------------------------------------------------------------
# Network


class ContinuousUNet(nn.Module):
    """Continuous U-Net ``F(x, c_noise, y) -> (N, out_channels, H, W)``; see the module docstring.

    ``augment_channels`` zero channels are appended at the first level, scaled by ``channel_mult`` at the others.
    Attention follows the encoder and decoder blocks at ``attn_resolutions`` and, with ``mid_attention``, the middle
    block. Every ODE block uses ``solver`` with ``solver_steps`` steps (``ODEBlock.evaluations`` f-calls each),
    backpropagated through or, with ``adjoint``, differentiated by the adjoint ODE. ``dropout`` zeroes hidden units of
    every vector field with one mask per block call (fixed across the solve). Defaults: the ``cunet-small`` preset.
    """

    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int | None = None,
        *,
        label_dim: int = 0,
        model_channels: int = 24,
        channel_mult: Sequence[int] = (1, 2, 2, 4),
        channel_mult_emb: int = 4,
        augment_channels: int = 8,
        attn_resolutions: Sequence[int] = (8, 4),
        mid_attention: bool = True,
        num_heads: int = 1,
        solver: str = "rk4",
        solver_steps: int = 1,
        adjoint: bool = False,
        dropout: float = 0.0,
        resample_filter: Sequence[float] = (1, 1),
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        _check_choice("solver", solver, tuple(TABLEAUS))
        num_levels = len(channel_mult)
        if num_levels < 1 or img_resolution % (1 << (num_levels - 1)):
            raise UserError(
                f"img_resolution={img_resolution} must be divisible by 2^(len(channel_mult)-1) = "
                f"{1 << max(num_levels - 1, 0)} (channel_mult={tuple(channel_mult)})"
            )
        if len(resample_filter) % 2:
            raise UserError(f"resample_filter={tuple(resample_filter)} must have even length, e.g. (1, 3, 3, 1)")
        if augment_channels < 0 or not 0 <= dropout < 1:
            raise UserError(f"need augment_channels >= 0 and 0 <= dropout < 1 (got {augment_channels}, {dropout})")

        self.img_resolution, self.in_channels, self.out_channels = img_resolution, in_channels, out_channels
        self.label_dim = label_dim
        emb_channels = model_channels * channel_mult_emb

        def ode(c: int, mult: int) -> ODEBlock:
            return ODEBlock(c, augment_channels * mult, emb_channels, method=solver, steps=solver_steps,
                            adjoint=adjoint, dropout=dropout)  # fmt: skip

        def attention(c: int, wanted: bool) -> Attention | None:
            return Attention(c, num_heads) if wanted else None

        self.map_noise = PositionalEmbedding(model_channels)
        self.map_label = linear(label_dim, model_channels) if label_dim else None
        self.map_layer0 = linear(model_channels, emb_channels)
        self.map_layer1 = linear(emb_channels, emb_channels)

        widths = [model_channels * m for m in channel_mult]
        self.conv_in = conv(in_channels, widths[0], 3)
        self.encoder = nn.ModuleList()
        for level, (c, mult) in enumerate(zip(widths, channel_mult, strict=True)):
            res = img_resolution >> level
            transition = None
            if level > 0:  # FIR downsample, then the 1x1 width change at the lower resolution
                transition = nn.Sequential(Resample(widths[level - 1], "down", resample_filter),
                                           conv(widths[level - 1], c, 1))  # fmt: skip
            self.encoder.append(_Level(transition, ode(c, mult), attention(c, res in attn_resolutions)))
        self.middle = _Level(None, ode(widths[-1], channel_mult[-1]), attention(widths[-1], mid_attention))

        self.up = nn.ModuleList()  # FIR upsample into decoder level l (< L-1), stored in execution order
        self.decoder = nn.ModuleList()  # stored in execution order (lowest resolution first)
        c_in = widths[-1]
        for level in reversed(range(num_levels)):
            c, mult, res = widths[level], channel_mult[level], img_resolution >> level
            if level < num_levels - 1:
                self.up.append(Resample(c_in, "up", resample_filter))
            merge = conv(c_in + c, c, 1)  # 1x1 over cat[h, skip]
            self.decoder.append(_Level(merge, ode(c, mult), attention(c, res in attn_resolutions)))
            c_in = c
        self.norm_out = _Norm(widths[0])
        self.conv_out = conv(widths[0], out_channels, 3, gain=1e-5)

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """x: (N, in_channels, H, W); noise_labels: (N,) or scalar c_noise; class_labels as for ``SongUNet`` (None =
        unconditional). Returns (N, out_channels, H, W) in the dtype of ``x``."""
        emb = mapping_network(self, noise_labels, class_labels, x.shape[0])

        h = self.conv_in(x)
        skips = []
        for level in self.encoder:
            h = level(h, emb)
            skips.append(h)
        h = self.middle(h, emb)
        for i, level in enumerate(self.decoder):
            if i > 0:
                h = self.up[i - 1](h)
            h = level(torch.cat([h, skips.pop()], dim=1), emb)
        return self.conv_out(F.silu(self.norm_out(h))).to(x.dtype)

    def ode_blocks(self) -> list[ODEBlock]:
        """Every ODE block, in module order (e.g. to change ``method`` / ``steps`` after building)."""
        return [m for m in self.modules() if isinstance(m, ODEBlock)]
