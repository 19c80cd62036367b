"""PSLD: Phase Space Langevin Diffusion (Pandey & Mandt 2023, arXiv 2303.01748) on the augmented state z = (x, m).

A batch z holds the x channels first and the m channels second, shape (N, 2C, ...). The forward SDE (PSLD eq. 6-7) is
dz = β(t)/2 F̃ z dt + G dW with one critically damped 2×2 block per (x, m) pair; its kernel, the HSM/DSM losses and the
ε-parameterisation are derived in docs/samplers.md (section "PSLD")."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import UserError
from ..expint import phi
from .base import LinearPFODE
from .gaussian_data import GaussianDataStats

LOSSES = ("hsm", "dsm")


# -- 2×2 blocks acting on (x, m) pairs ----------------------------------------------------------------------------
def split(z: Tensor) -> tuple[Tensor, Tensor]:
    """(x, m) channel groups of an augmented batch z of shape (N, 2C, ...)."""
    c = z.shape[1] // 2
    return z[:, :c], z[:, c:]


def join(x: Tensor, m: Tensor) -> Tensor:
    """The augmented batch z = (x, m): channel concatenation."""
    return torch.cat([x, m], dim=1)


def _per_row(a: Tensor, like: Tensor) -> Tensor:
    """A scalar or per-row coefficient reshaped to broadcast over ``like`` (N, ...), in its dtype and device."""
    a = a.to(device=like.device, dtype=like.dtype)
    return a.reshape(-1, *([1] * (like.ndim - 1))) if a.ndim else a


def apply_block(a: Tensor, z: Tensor) -> Tensor:
    """``(a ⊗ I) z``: the 2×2 block ``a`` (shape (2, 2) or per row (N, 2, 2)) applied to every (x, m) pair of z."""
    x, m = split(z)
    a00, a01, a10, a11 = (_per_row(a[..., i, j], x) for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)))
    return join(a00 * x + a01 * m, a10 * x + a11 * m)


def block_diag(d0: Tensor, d1: Tensor) -> Tensor:
    """diag(d0, d1) as (..., 2, 2) from two broadcastable tensors."""
    d0, d1 = torch.broadcast_tensors(torch.as_tensor(d0), torch.as_tensor(d1))
    zero = torch.zeros_like(d0)
    return torch.stack([torch.stack([d0, zero], -1), torch.stack([zero, d1], -1)], -2)


def cholesky2(s: Tensor) -> Tensor:
    """Lower Cholesky factor of SPD 2×2 blocks: L = [[√a, 0], [b/√a, √(det/a)]] for [[a, b], [b, c]]."""
    a, b, c = s[..., 0, 0], s[..., 0, 1], s[..., 1, 1]
    l11 = a.sqrt()
    return block_diag(l11, (c - b * b / a).sqrt()) + _lower(b / l11)


def _lower(v: Tensor) -> Tensor:
    zero = torch.zeros_like(v)
    return torch.stack([torch.stack([zero, zero], -1), torch.stack([v, zero], -1)], -2)


def inv2(a: Tensor) -> Tensor:
    """Inverse of 2×2 blocks by the adjugate formula."""
    det = a[..., 0, 0] * a[..., 1, 1] - a[..., 0, 1] * a[..., 1, 0]
    adj = torch.stack([torch.stack([a[..., 1, 1], -a[..., 0, 1]], -1), torch.stack([-a[..., 1, 0], a[..., 0, 0]], -1)],
                      -2)
    return adj / det[..., None, None]


def _mat(rows: list[list[float]], device: torch.device | None = None) -> Tensor:
    return torch.tensor(rows, dtype=torch.float64, device=device)


def critical_flow(a: Tensor, q: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """(exp(U a/2), ∫₀^U e^{(U−v)a/2} q e^{(U−v)aᵀ/2} dv) of dz = ½ a z du + q^{1/2} dW for a critically damped a,
    in closed form (docs/samplers.md, "Critical damping and the kernel"); float64, shape (*U.shape, 2, 2)."""
    u = torch.as_tensor(u, dtype=torch.float64)
    a, q = a.to(u.device, torch.float64), q.to(u.device, torch.float64)
    eye = torch.eye(2, dtype=torch.float64, device=u.device)
    alpha = (a[0, 0] + a[1, 1]) / 2  # the double eigenvalue
    n = a - alpha * eye
    c = (u / 2)[..., None, None]
    mean = (alpha * c).exp() * (eye + c * n)
    x = 2 * alpha * (u / 2)
    # I_k = (U/2)^{k+1} ∫₀¹ r^k e^{x r} dr = (U/2)^{k+1} k! e^x φ_{k+1}(−x)
    i0, i1, i2 = ((u / 2) ** (k + 1) * math.factorial(k) * x.exp() * phi(k + 1, -x) for k in range(3))
    cov = 2 * (q * i0[..., None, None] + (n @ q + q @ n.T) * i1[..., None, None] + (n @ q @ n.T) * i2[..., None, None])
    return mean, cov


_GL_NODES = 24  # Gauss-Legendre nodes of the conjugate weights' quadrature in ln s


def _gauss_legendre(n: int) -> tuple[Tensor, Tensor]:
    x, w = np.polynomial.legendre.leggauss(n)
    return torch.tensor(x, dtype=torch.float64), torch.tensor(w, dtype=torch.float64)


# -- the process --------------------------------------------------------------------------------------------------
@dataclass
class PSLD:
    """PSLD with the reference CIFAR-10 constants (Γ = 0.01, ν = 4.01, M⁻¹ = 4, β = 8, γ = 0.04): x and m friction
    Γ, ν, m₀ ~ N(0, γM), β(t) = β_min + t (β_max − β_min) on [0, T]; training t ~ U[train_eps, T], sampling to
    eval_eps."""

    Gamma: float = 0.01
    nu: float = 4.01
    gamma: float = 0.04
    beta_min: float = 8.0
    beta_max: float = 8.0
    T: float = 1.0
    train_eps: float = 1e-5
    eval_eps: float = 1e-3
    loss: str = "hsm"
    name: str = "psld"

    family: ClassVar[str] = "psld"
    level_name: ClassVar[str] = "t"
    state_groups: ClassVar[int] = 2  # the network sees and predicts (x, m): 2C channels

    def __post_init__(self) -> None:
        if not 0 < self.Gamma < self.nu:  # Γ = 0 is CLD, whose x-score vanishes: a different parameterisation
            raise UserError(f"psld needs 0 < Gamma < nu, got Gamma={self.Gamma}, nu={self.nu}")
        if not (self.gamma > 0 and self.beta_min > 0 and self.beta_max > 0 and 0 < self.train_eps < self.T
                and 0 < self.eval_eps < self.T):
            raise UserError("psld needs gamma, beta_min, beta_max > 0 and 0 < train_eps, eval_eps < T")
        if self.loss not in LOSSES:
            raise UserError(f"psld loss must be one of {', '.join(LOSSES)}, got '{self.loss}'")

    # -- constants -------------------------------------------------------------------------------------------------
    @property
    def M_inv(self) -> float:
        """M⁻¹ = (ν − Γ)² / 4: critical damping of F̃."""
        return (self.nu - self.Gamma) ** 2 / 4

    @property
    def M(self) -> float:
        return 1 / self.M_inv

    @property
    def sigma_min(self) -> float:
        """Smallest time a sampler integrates to before its last denoising step (``eval_eps``)."""
        return self.eval_eps

    @property
    def sigma_max(self) -> float:
        return self.T

    def config(self) -> dict:
        keys = ("Gamma", "nu", "gamma", "beta_min", "beta_max", "T", "train_eps", "eval_eps", "loss", "name")
        return {k: getattr(self, k) for k in keys}

    def F_tilde(self, device: torch.device | None = None) -> Tensor:
        """F̃ = [[−Γ, M⁻¹], [−1, −ν]]: F(t) = β(t)/2 F̃."""
        return _mat([[-self.Gamma, self.M_inv], [-1.0, -self.nu]], device)

    def D_tilde(self, device: torch.device | None = None) -> Tensor:
        """D̃ = diag(Γ, Mν): G Gᵀ = β(t) D̃."""
        return _mat([[self.Gamma, 0.0], [0.0, self.M * self.nu]], device)

    def H(self, device: torch.device | None = None) -> Tensor:
        """H = diag(1, M⁻¹): the stationary law is N(0, H⁻¹) and its score is −H z."""
        return _mat([[1.0, 0.0], [0.0, self.M_inv]], device)

    def Q_tilde(self, device: torch.device | None = None) -> Tensor:
        """Q̃ = [[0, −1], [1, 0]]: F̃ = −(D̃ + Q̃) H, the dissipative and conservative parts of the drift."""
        return _mat([[0.0, -1.0], [1.0, 0.0]], device)

    def initial_cov(self, loss: str = "hsm", device: torch.device | None = None) -> Tensor:
        """Σ₀: diag(0, γM) for HSM (m₀ marginalised), 0 for DSM (m₀ drawn)."""
        return _mat([[0.0, 0.0], [0.0, self.gamma * self.M if loss == "hsm" else 0.0]], device)

    def noise_gain(self, noise_x: float, noise_m: float, device: torch.device | None = None) -> Tensor:
        """I + Λ², Λ = diag(noise_x, noise_m): the ε gain of the reverse process with noise Λ G."""
        return torch.diag(torch.tensor([1 + noise_x**2, 1 + noise_m**2], dtype=torch.float64, device=device))

    # -- schedule --------------------------------------------------------------------------------------------------
    def _t(self, t: Tensor | float) -> Tensor:
        return torch.as_tensor(t, dtype=torch.float64)

    def beta(self, t: Tensor | float) -> Tensor:
        """β(t) = β_min + t (β_max − β_min)."""
        t = self._t(t)
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def b(self, t: Tensor | float) -> Tensor:
        """b(t) = ∫₀ᵗ β = β_min t + (β_max − β_min) t² / 2."""
        t = self._t(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    # -- linear SDE coefficients (float64, shape (*t.shape, 2, 2)) -------------------------------------------------
    def drift_matrix(self, t: Tensor | float) -> Tensor:
        """F(t) = β(t)/2 F̃."""
        beta = self.beta(t)
        return beta[..., None, None] / 2 * self.F_tilde(beta.device)

    def diffusion_matrix(self, t: Tensor | float) -> Tensor:
        """G(t) = diag(√(Γβ), √(Mνβ))."""
        beta = self.beta(t)
        return block_diag((self.Gamma * beta).sqrt(), (self.M * self.nu * beta).sqrt())

    def transition(self, t: Tensor | float, s: Tensor | float) -> Tensor:
        """Ψ(t, s) = exp((b(t) − b(s)) F̃ / 2): the flow of dz/dt = F(t) z from s to t (either direction)."""
        u = self.b(t) - self.b(s)
        return critical_flow(self.F_tilde(u.device), self.D_tilde(u.device), u)[0]

    def kernel_mean_matrix(self, t: Tensor | float) -> Tensor:
        """μ(t) = Ψ(t, 0): E[z_t | z₀] = μ(t) z₀."""
        return self.transition(t, 0.0)

    def kernel_cov(self, t: Tensor | float, loss: str = "hsm") -> Tensor:
        """Σ(t) = μ Σ₀ μᵀ + ∫₀ᵗ Ψ(t, s) G Gᵀ Ψ(t, s)ᵀ ds (closed form, see the module docstring)."""
        u = self.b(t)
        mean, cov = critical_flow(self.F_tilde(u.device), self.D_tilde(u.device), u)
        return mean @ self.initial_cov(loss, u.device) @ mean.transpose(-1, -2) + cov

    def kernel_chol(self, t: Tensor | float, loss: str = "hsm") -> Tensor:
        """L_t: Σ(t) = L_t L_tᵀ, lower triangular."""
        return cholesky2(self.kernel_cov(t, loss))

    def score_matrix(self, t: Tensor | float) -> Tensor:
        """C_out(t) = −L_t^{-T} (HSM): score = C_out ε = −L_t^{-T} ε."""
        return -inv2(self.kernel_chol(t)).transpose(-1, -2)

    def eps_matrix(self, t: Tensor | float) -> Tensor:
        """K(t) = −½ G Gᵀ C_out = β/2 D̃ L_t^{-T}: the ε term of the PF-ODE dz/dt = F z + K ε."""
        beta = self.beta(t)
        return -beta[..., None, None] / 2 * self.D_tilde(beta.device) @ self.score_matrix(t)

    # -- score and drifts ------------------------------------------------------------------------------------------
    def score_from_eps(self, eps: Tensor, t: Tensor | float) -> Tensor:
        """∇ log p_t(z) = −L_t^{-T} ε."""
        return apply_block(self.score_matrix(t), eps)

    def eps_from_score(self, score: Tensor, t: Tensor | float) -> Tensor:
        """ε = −L_tᵀ ∇ log p_t(z)."""
        return apply_block(-self.kernel_chol(t).transpose(-1, -2), score)

    def reverse_drift(self, z: Tensor, eps: Tensor, t: Tensor | float, noise_x: float = 1.0,
                      noise_m: float = 1.0) -> Tensor:
        """β/2 [F̃ z + (I + Λ²) D̃ L_t^{-T} ε]: the reverse drift with noise Λ G, Λ = diag(noise_x, noise_m), whose
        marginals are p_t for every Λ (Song et al. 2021, eq. 6 generalised; Λ = 0 the PF-ODE, Λ = I PSLD eq. 11)."""
        k = self.eps_matrix(t)
        return apply_block(self.drift_matrix(t), z) + apply_block(self.noise_gain(noise_x, noise_m, k.device) @ k, eps)

    def pf_ode_drift(self, z: Tensor, eps: Tensor, t: Tensor | float) -> Tensor:
        """dz/dt = F z − ½ G Gᵀ ∇log p_t = β/2 [F̃ z + D̃ L_t^{-T} ε]."""
        return self.reverse_drift(z, eps, t, 0.0, 0.0)

    def reverse_sde_drift(self, z: Tensor, eps: Tensor, t: Tensor | float) -> Tensor:
        """Reverse-SDE drift F z − G Gᵀ ∇log p_t = β/2 [F̃ z + 2 D̃ L_t^{-T} ε] (PSLD eq. 11)."""
        return self.reverse_drift(z, eps, t, 1.0, 1.0)

    # -- pieces of splitting samplers (reverse time τ = T − t; Λ = diag(noise_x, noise_m)) ---------------------------
    def reverse_ou(self, t_from: Tensor | float, t_to: Tensor | float) -> tuple[Tensor, Tensor]:
        """Mean map and covariance of SSCS's linear part dz = β/2 (Q̃ − D̃) H z dτ + G dW̄ from t_from down to t_to
        (PSLD eq. 12), solved exactly."""
        u = self.b(t_from) - self.b(t_to)
        a = (self.Q_tilde(u.device) - self.D_tilde(u.device)) @ self.H(u.device)
        return critical_flow(a, self.D_tilde(u.device), u)

    def score_split_matrix(self, t: Tensor | float) -> Tensor:
        """β D̃ H: SSCS's score part is dz/dτ = β D̃ (H z + ∇log p_t) = β D̃ H z − 2 K ε."""
        beta = self.beta(t)
        return beta[..., None, None] * self.D_tilde(beta.device) @ self.H(beta.device)

    def friction_flow(self, t_from: Tensor | float, t_to: Tensor | float, noise_x: float = 1.0,
                      noise_m: float = 1.0) -> tuple[Tensor, Tensor]:
        """(decay, variance), diag 2×2, of the O part dz = −β/2 Λ² D̃ H z dτ + Λ G dW̄ from t_from down to t_to (exact;
        leaves N(0, H⁻¹) invariant)."""
        u = self.b(t_from) - self.b(t_to)
        rx, rm = -noise_x**2 * self.Gamma * u, -noise_m**2 * self.nu * u
        return block_diag((rx / 2).exp(), (rm / 2).exp()), block_diag(-torch.expm1(rx), -self.M * torch.expm1(rm))

    def hamiltonian_matrix(self, t: Tensor | float, noise_x: float = 1.0, noise_m: float = 1.0) -> Tensor:
        """W = β/2 [Q̃ H + (I + Λ²) D̃ H]: dz/dτ = W z − (I + Λ²) K ε, the reverse drift less ``friction_flow``."""
        beta = self.beta(t)
        dev = beta.device
        gain = self.noise_gain(noise_x, noise_m, dev)
        return beta[..., None, None] / 2 * (self.Q_tilde(dev) + gain @ self.D_tilde(dev)) @ self.H(dev)

    # -- conjugate integrators: dz/dt = F̄ z + (I + Λ²) K ε̄ (docs/samplers.md, PSLD conjugate integrators) ------------
    def conjugate_drift(self, precondition: float, noise_x: float = 0.0, noise_m: float = 0.0) -> Tensor:
        """X̃ = −Q̃ H − (1 − κ)(I + Λ²) D̃ H, κ = ``precondition``: F̄ = β/2 X̃."""
        gain = self.noise_gain(noise_x, noise_m)
        return -self.Q_tilde() @ self.H() - (1 - precondition) * gain @ self.D_tilde() @ self.H()

    def eps_bar(self, eps: Tensor, z: Tensor, t: Tensor, precondition: float) -> Tensor:
        """ε̄ = ε − κ L_tᵀ H z: what the network adds to the stationary score −κ H z."""
        if precondition == 0:
            return eps
        return eps - precondition * apply_block(self.kernel_chol(t).transpose(-1, -2) @ self.H(t.device), z)

    def conjugate_weights(self, t0: Tensor, t1: Tensor, b: Tensor, precondition: float, noise_x: float,
                          noise_m: float, moment: int = 0) -> Tensor:
        """−∫_{t1}^{t0} exp((s − t1)(B − F̄)) (I + Λ²) K_s (s − t0)^moment ds per step t0 → t1, constant β
        (Gauss-Legendre in ln s: K_s ~ s^{-1/2} near 0)."""
        nodes, weights = _gauss_legendre(_GL_NODES)
        lo, hi = t1.log()[:, None], t0.log()[:, None]
        s = (lo + (hi - lo) * (nodes + 1) / 2).exp()  # (n, nodes)
        w = (hi - lo) / 2 * weights * s * (s - t0[:, None]) ** moment
        a = b - self.beta_min / 2 * self.conjugate_drift(precondition, noise_x, noise_m)
        flow = torch.linalg.matrix_exp((s - t1[:, None])[..., None, None] * a)
        gain_k = self.noise_gain(noise_x, noise_m) @ self.eps_matrix(s)
        return -(w[..., None, None] * flow @ gain_k).sum(1)

    def linear_pf_ode(self, precondition: float = 1.0, noise_x: float = 0.0, noise_m: float = 0.0) -> LinearPFODE:
        """dz/dt = F̄ z + (I + Λ²) K ε̄ for the conjugate core, with exact (P, Q) when β is constant."""

        def fbar(t: float) -> np.ndarray:
            return (self.beta(t) / 2 * self.conjugate_drift(precondition, noise_x, noise_m)).numpy()

        def gain(t: float) -> np.ndarray:
            return (self.noise_gain(noise_x, noise_m) @ self.eps_matrix(t)).numpy()

        def closed_form(ts: Sequence[float], b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """P = exp(h (B − F̄)) (I − h B), Q = ``conjugate_weights`` (moment 0)."""
            t = torch.tensor(np.asarray(ts, dtype=np.float64))
            t0, t1 = t[:-1], t[1:]
            bb = torch.as_tensor(np.asarray(b), dtype=torch.float64)
            h = (t0 - t1)[:, None, None]
            a = bb - self.beta_min / 2 * self.conjugate_drift(precondition, noise_x, noise_m)
            big_p = torch.linalg.matrix_exp(h * a) @ (torch.eye(2, dtype=torch.float64) - h * bb)
            return big_p.numpy(), self.conjugate_weights(t0, t1, bb, precondition, noise_x, noise_m).numpy()

        key = ("psld", tuple(sorted(self.config().items())), precondition, noise_x, noise_m)
        return LinearPFODE(fbar=fbar, gain=gain, k=2, key=key,
                           closed_form=closed_form if self.beta_min == self.beta_max else None)

    def prior(self, noise: Tensor, sigma_start: Tensor, noise_fn: Callable[[Tensor], Tensor]) -> Tensor:
        """z_T ~ N(0, diag(1, M)): x from ``noise``, m from a fresh ``noise_fn`` draw (any start time)."""
        return join(noise, math.sqrt(self.M) * noise_fn(noise))

    def data_part(self, state: Tensor) -> Tensor:
        """x of z = (x, m)."""
        return split(state)[0]

    def gaussian_model(self, stats: GaussianDataStats) -> Callable[[Tensor, Tensor | float], Tensor]:
        """The exact ε(z, t) of Gaussian data with these statistics (``psld_gaussian.gaussian_eps``)."""
        from .psld_gaussian import gaussian_eps  # it builds on this module's 2×2 blocks

        return lambda z, t: gaussian_eps(self, stats, z, t)

    def gaussian_transport(self, stats: GaussianDataStats, z: Tensor, t_from: float, t_to: float) -> Tensor:
        """z(t_to) of the exact PF-ODE flow of Gaussian data from z(t_from) = z (``psld_gaussian``)."""
        from .psld_gaussian import gaussian_transport

        return gaussian_transport(self, stats, z, t_from, t_to)

    # -- training --------------------------------------------------------------------------------------------------
    def c_noise(self, t: Tensor) -> Tensor:
        """Network time conditioning: ln(t) / 4 (t ∈ [1e-5, 1] maps into [−2.9, 0])."""
        return t.log() / 4

    def sample_sigma(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Training times t ~ U[train_eps, T], shape (n,), float64."""
        dev = None if generator is None else generator.device
        u = torch.rand(n, generator=generator, dtype=torch.float64, device=dev)
        return self.train_eps + u * (self.T - self.train_eps)

    def loss_weight(self, sigma: Tensor, step: int = 0) -> Tensor:
        """The ε loss is unweighted (the reference's λ(t) = 1/‖L_t^{-T}‖² 'fid' weighting of the score loss)."""
        return torch.ones_like(sigma)

    def loss_clamp(self, step: int) -> float:
        return math.inf

    def network_output(self, net: nn.Module, x: Tensor, sigma: Tensor | float,
                       class_labels: Tensor | None = None) -> Tensor:
        """ε_θ(z, t) = F(z, c_noise(t)) on the augmented state (2C channels in and out), in fp32 (PSLD eq. 9)."""
        t = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1).expand(x.shape[0])
        return net(x.float(), self.c_noise(t).float(), class_labels).float()

    def sampling_range(self) -> tuple[float, float]:
        return self.eval_eps, self.T

    def noise_shape(self, data_shape: tuple[int, ...] | torch.Size) -> tuple[int, ...]:
        """Shape of one training step's noise for a data batch: ε for (x, m), plus m₀'s noise under DSM."""
        n, c, *rest = data_shape
        return (n, (2 if self.loss == "hsm" else 3) * c, *rest)

    def perturb(self, x0: Tensor, t: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """(z_t, ε target) of one training step: HSM z_t = μ_t (x₀, 0) + L_t ε; DSM with m₀ drawn and target
        L_tᵀ (L^D_t)^{-T} ε, so both losses have the minimiser −L_tᵀ ∇log p_t (docs/samplers.md, "HSM and DSM")."""
        c = x0.shape[1]
        eps = noise[:, : 2 * c]
        mean = self.kernel_mean_matrix(t)
        if self.loss == "hsm":
            z0 = join(x0, torch.zeros_like(x0))
            return apply_block(mean, z0) + apply_block(self.kernel_chol(t), eps), eps
        z0 = join(x0, math.sqrt(self.gamma * self.M) * noise[:, 2 * c:])
        chol_d = self.kernel_chol(t, "dsm")
        target = self.kernel_chol(t).transpose(-1, -2) @ inv2(chol_d).transpose(-1, -2)
        return apply_block(mean, z0) + apply_block(chol_d, eps), apply_block(target, eps)

    def training_loss(self, model: Callable, x0: Tensor, t: Tensor, noise: Tensor, step: int = 0,
                      class_labels: Tensor | None = None) -> Tensor:
        """Mean over the batch and the 2C channels of (ε_θ(z_t, t[, y]) − target)² (PSLD eq. 8-10, HSM or DSM)."""
        z, target = self.perturb(x0, t, noise)
        pred = model(z, t) if class_labels is None else model(z, t, class_labels)
        return (pred.float() - target.float()).square().mean()
