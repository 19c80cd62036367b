"""PSLD: Phase Space Langevin Diffusion (Pandey & Mandt 2023, arXiv 2303.01748) on the augmented state z = (x, m).

Every pixel carries a pair (x, m); a batch ``z`` holds the x channels first and the m channels second, shape
(N, 2C, ...) for data of shape (N, C, ...). The forward SDE (PSLD eq. 6-7) is linear with one 2×2 block per pair:

    dz = F(t) z dt + G(t) dW,   F(t) = β(t)/2 · F̃,  F̃ = [[−Γ, M⁻¹], [−1, −ν]],   G Gᵀ = β(t) D̃,  D̃ = diag(Γ, Mν)

with critical damping (ν − Γ)² = 4 M⁻¹ (M⁻¹ is derived from Γ and ν), β(t) = β_min + t (β_max − β_min) and
b(t) = ∫₀ᵗ β. The stationary law N(0, diag(1, M)) is the prior.

Kernel (derived here): F̃ = λI + N with λ = −(Γ + ν)/2 and N² = 0 (critical damping), so with u = b(t)

    μ(t) = exp(u F̃ / 2) = e^{λu/2} (I + (u/2) N)
    Σ(t) = μ Σ₀ μᵀ + 2 [D̃ I₀ + (N D̃ + D̃ Nᵀ) I₁ + N D̃ Nᵀ I₂],   I_k = ∫₀^{u/2} r^k e^{2λr} dr

and z_t | z₀ ~ N(μ(t) z₀, Σ(t)). Hybrid score matching (HSM, the default) marginalises m₀ ~ N(0, γM): z₀ = (x₀, 0),
Σ₀ = diag(0, γM). Denoising score matching (DSM) draws m₀ and uses Σ₀ = 0. With Σ_t = L_t L_tᵀ (Cholesky, HSM) the
network predicts ε and the score is s = −L_t^{-T} ε (PSLD eq. 9-10); sampling always uses the HSM L_t.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..errors import UserError

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
    """Lower Cholesky factor of symmetric positive-definite 2×2 blocks (..., 2, 2):
    L = [[√a, 0], [b/√a, √(det/a)]] for s = [[a, b], [b, c]]."""
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


def _phi(k: int, x: Tensor) -> Tensor:
    """φ_k(x) = ∫₀¹ u^k e^{xu} du (float64), by its Taylor series Σ_j x^j / (j! (j+k+1)) for |x| < 1/2 and in closed
    form (φ₀ = (e^x − 1)/x, φ_{k} = (e^x − k φ_{k−1})/x) elsewhere."""
    small = x.abs() < 0.5
    xs = torch.where(small, x, torch.zeros_like(x))
    series, term = torch.zeros_like(x), torch.ones_like(x)
    for j in range(20):
        series = series + term / (j + k + 1)
        term = term * xs / (j + 1)
    xl = torch.where(small, torch.ones_like(x), x)
    closed = torch.expm1(xl) / xl
    for i in range(1, k + 1):
        closed = (xl.exp() - i * closed) / xl
    return torch.where(small, series, closed)


def critical_flow(a: Tensor, q: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """Mean map and covariance of ``dz = ½ a z du + q^{1/2} dW`` over u ∈ [0, U] for a critically damped 2×2 ``a``
    (double eigenvalue λ = tr(a)/2, so a = λI + N with N² = 0):

        exp(U a / 2) = e^{λU/2} (I + (U/2) N),
        ∫₀^U e^{(U−v) a/2} q e^{(U−v) aᵀ/2} dv = 2 [q I₀ + (N q + q Nᵀ) I₁ + N q Nᵀ I₂],  I_k = ∫₀^{U/2} r^k e^{2λr} dr.

    ``U`` may be negative (the mean map is then the inverse flow; the covariance is meaningful for U ≥ 0 only).
    Returns float64 tensors of shape (*U.shape, 2, 2).
    """
    u = torch.as_tensor(u, dtype=torch.float64)
    a, q = a.to(u.device, torch.float64), q.to(u.device, torch.float64)
    eye = torch.eye(2, dtype=torch.float64, device=u.device)
    lam = (a[0, 0] + a[1, 1]) / 2
    n = a - lam * eye
    c = (u / 2)[..., None, None]
    mean = (lam * c).exp() * (eye + c * n)
    x = 2 * lam * (u / 2)
    i0, i1, i2 = ((u / 2) ** (k + 1) * _phi(k, x) for k in range(3))
    cov = 2 * (q * i0[..., None, None] + (n @ q + q @ n.T) * i1[..., None, None] + (n @ q @ n.T) * i2[..., None, None])
    return mean, cov


# -- the process --------------------------------------------------------------------------------------------------
@dataclass
class PSLD:
    """PSLD with the reference CIFAR-10 constants as defaults (Γ = 0.01, ν = 4.01, M⁻¹ = 4, β = 8, γ = 0.04).

    Γ (``Gamma``) and ν (``nu``) are the x and m friction, γ (``gamma``) the initial momentum scale (m₀ ~ N(0, γM)),
    β(t) = β_min + t (β_max − β_min) on t ∈ [0, T]. Training draws t ~ U[train_eps, T] and the loss is the mean over
    pixels of ‖ε − ε_θ(z_t, t)‖² (``loss`` = 'hsm' or 'dsm'); samplers integrate from T down to eval_eps and take a
    last denoising step to 0.
    """

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
        """Drift of the reverse-time process with noise Λ G dW̄, Λ = diag(noise_x, noise_m), whose marginals are
        p_t for every Λ (Song et al. 2021, eq. 6 generalised):

            dz = [F z − ½ (G Gᵀ + Λ G Gᵀ Λ) ∇log p_t] dt + Λ G dW̄ = β/2 [F̃ z + (I + Λ²) D̃ L_t^{-T} ε] dt + Λ G dW̄.

        Λ = 0 is the PF-ODE, Λ = I the reverse SDE (PSLD eq. 11). Time runs backwards: a step t → t − h adds −h·drift.
        """
        k = self.eps_matrix(t)
        k = _mat([[1 + noise_x**2, 0.0], [0.0, 1 + noise_m**2]], k.device) @ k
        return apply_block(self.drift_matrix(t), z) + apply_block(k, eps)

    def pf_ode_drift(self, z: Tensor, eps: Tensor, t: Tensor | float) -> Tensor:
        """dz/dt = F z − ½ G Gᵀ ∇log p_t = β/2 [F̃ z + D̃ L_t^{-T} ε]."""
        return self.reverse_drift(z, eps, t, 0.0, 0.0)

    def reverse_sde_drift(self, z: Tensor, eps: Tensor, t: Tensor | float) -> Tensor:
        """Reverse-SDE drift F z − G Gᵀ ∇log p_t = β/2 [F̃ z + 2 D̃ L_t^{-T} ε] (PSLD eq. 11)."""
        return self.reverse_drift(z, eps, t, 1.0, 1.0)

    # -- pieces of splitting samplers (reverse time τ = T − t; Λ = diag(noise_x, noise_m)) ---------------------------
    def reverse_ou(self, t_from: Tensor | float, t_to: Tensor | float) -> tuple[Tensor, Tensor]:
        """Mean map and covariance of SSCS's linear part (PSLD eq. 12), solved exactly from t_from down to t_to:

            dz = β/2 (Q̃ − D̃) H z dτ + G dW̄ = β/2 [[−Γ, −M⁻¹], [1, −ν]] z dτ + G dW̄,

        critically damped like F̃ and leaving N(0, H⁻¹) invariant."""
        u = self.b(t_from) - self.b(t_to)
        a = (self.Q_tilde(u.device) - self.D_tilde(u.device)) @ self.H(u.device)
        return critical_flow(a, self.D_tilde(u.device), u)

    def score_split_matrix(self, t: Tensor | float) -> Tensor:
        """β D̃ H: SSCS's score part is dz/dτ = β D̃ (H z + ∇log p_t) = β D̃ H z − 2 K ε."""
        beta = self.beta(t)
        return beta[..., None, None] * self.D_tilde(beta.device) @ self.H(beta.device)

    def friction_flow(self, t_from: Tensor | float, t_to: Tensor | float, noise_x: float = 1.0,
                      noise_m: float = 1.0) -> tuple[Tensor, Tensor]:
        """(decay, variance), each diag (…, 2, 2), of the per-coordinate Ornstein-Uhlenbeck part of the reverse
        process with noise Λ G, solved exactly from t_from down to t_to (u = b(t_from) − b(t_to)):

            dz = −β/2 Λ² D̃ H z dτ + Λ G dW̄:  x ← e^{−λ_x² Γ u/2} x + √(1 − e^{−λ_x² Γ u}) n,
                                              m ← e^{−λ_m² ν u/2} m + √(M (1 − e^{−λ_m² ν u})) n,

        which leaves N(0, H⁻¹) invariant (the O of OBA)."""
        u = self.b(t_from) - self.b(t_to)
        rx, rm = -noise_x**2 * self.Gamma * u, -noise_m**2 * self.nu * u
        return block_diag((rx / 2).exp(), (rm / 2).exp()), block_diag(-torch.expm1(rx), -self.M * torch.expm1(rm))

    def hamiltonian_matrix(self, t: Tensor | float, noise_x: float = 1.0, noise_m: float = 1.0) -> Tensor:
        """W = β/2 [Q̃ H + (I + Λ²) D̃ H]: what remains of the reverse drift after ``friction_flow``,

            dz/dτ = W z − (I + Λ²) K ε,   rows: x (the A of OBA) and m (the B of OBA)."""
        beta = self.beta(t)
        dev = beta.device
        lam = _mat([[1 + noise_x**2, 0.0], [0.0, 1 + noise_m**2]], dev)
        return beta[..., None, None] / 2 * (self.Q_tilde(dev) + lam @ self.D_tilde(dev)) @ self.H(dev)

    def prior(self, noise_x: Tensor, noise_m: Tensor) -> Tensor:
        """z_T ~ N(0, diag(1, M)) from two standard-normal tensors of the data shape."""
        return join(noise_x, math.sqrt(self.M) * noise_m)

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

    def sampling_range(self) -> tuple[float, float]:
        return self.eval_eps, self.T

    def noise_shape(self, data_shape: tuple[int, ...] | torch.Size) -> tuple[int, ...]:
        """Shape of one training step's noise for a data batch: ε for (x, m), plus m₀'s noise under DSM."""
        n, c, *rest = data_shape
        return (n, (2 if self.loss == "hsm" else 3) * c, *rest)

    def perturb(self, x0: Tensor, t: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """(z_t, ε target) of one training step.

        HSM: z_t = μ_t (x₀, 0) + L_t ε, target ε. DSM: m₀ = √(γM) n, z_t = μ_t (x₀, m₀) + L^D_t ε with the DSM
        factor L^D_t (Σ₀ = 0), target L_tᵀ (L^D_t)^{-T} ε, so that the minimiser is −L_tᵀ ∇log p_t for either loss
        and one ε-network samples the same way whichever loss trained it.
        """
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

    def training_loss(self, model, x0: Tensor, t: Tensor, noise: Tensor, step: int = 0) -> Tensor:
        """Mean over the batch and the 2C channels of (ε_θ(z_t, t) − target)² (PSLD eq. 8-10, HSM or DSM)."""
        z, target = self.perturb(x0, t, noise)
        pred = model(z, t)
        return (pred.float() - target.float()).square().mean()
