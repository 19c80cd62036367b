"""Exact PSLD references on Gaussian-mixture data: the ε-network and the PF-ODE solution (docs/benchmarks.md)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..data.gmm import GaussianMixture
from ..processes.psld import PSLD, apply_block, cholesky2, join, split
from ..samplers.registry import EpsModel
from ..samplers.splitting import final_step


def _times(t: Tensor | float, n: int) -> Tensor:
    """t as a float64 CPU scalar when all rows share it (coefficients computed once), else one value per row."""
    t = torch.as_tensor(t, dtype=torch.float64).cpu().reshape(-1)
    if t.numel() == 1 or bool((t == t[0]).all()):
        return t[0]
    return t.expand(n)


class PSLDMixtureEps:
    """``ε*(z, t) = −L_tᵀ ∇ log p_t(z)`` of PSLD for Gaussian-mixture data, z (N, 2D) or (N, 2C, H, W); knows its
    ``process`` like a model."""

    def __init__(self, mixture: GaussianMixture, process: PSLD) -> None:
        self.mixture, self.process = mixture, process
        self._cache: dict[float, tuple[Tensor, ...]] = {}

    def _moments(self, t: Tensor) -> tuple[Tensor, ...]:
        """Per-row (a_x, a_m), the HSM Σ entries (xx, xm, mm), each (n, 1, 1) to broadcast over (n, K, D), and L_tᵀ;
        cached for scalar t."""
        key = float(t) if t.ndim == 0 else None
        if key in self._cache:
            return self._cache[key]
        a = self.process.kernel_mean_matrix(t)[..., :, 0]
        cov = self.process.kernel_cov(t)
        out = tuple(v.reshape(-1, 1, 1) for v in (a[..., 0], a[..., 1], cov[..., 0, 0], cov[..., 0, 1],
                                                   cov[..., 1, 1]))
        out = (*out, cholesky2(cov).transpose(-1, -2))
        if key is not None:
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = out
        return out

    def log_terms_and_score(self, x: Tensor, m: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(log w_k Π_d N₂, shape (n, K)) and the per-component score terms −C⁻¹(z − mean), each (n, K, D)."""
        ax, am, sxx, sxm, smm, _ = self._moments(t)
        mu, var = self.mixture.means[None], self.mixture.variances[None]
        cxx, cxm, cmm = var * ax**2 + sxx, var * ax * am + sxm, var * am**2 + smm
        det = cxx * cmm - cxm**2
        dx, dm = x[:, None] - ax * mu, m[:, None] - am * mu
        gx, gm = -(cmm * dx - cxm * dm) / det, -(cxx * dm - cxm * dx) / det
        quad = -(dx * gx + dm * gm)
        log_n = -0.5 * (quad + det.log() + 2 * math.log(2 * math.pi)).sum(-1)
        return self.mixture.weights.log()[None] + log_n, gx, gm

    def score(self, z: Tensor, t: Tensor | float) -> Tensor:
        """∇_z log p_t(z) = −Σ_k r_k(z) C_kd⁻¹ (z_d − a_t μ_kd), same shape and dtype as ``z``."""
        n = z.shape[0]
        xs, _ = split(z)
        x, m = (v.reshape(n, -1).double() for v in split(z))
        tt = _times(t, n)
        if tt.ndim == 0:
            sx, sm = self._score_products(x, m, tt)
        else:
            log_terms, gx, gm = self.log_terms_and_score(x.cpu(), m.cpu(), tt)
            r = (log_terms - log_terms.logsumexp(dim=1, keepdim=True)).exp()[..., None]
            sx, sm = (r * gx).sum(1).to(x.device), (r * gm).sum(1).to(x.device)
        return join(sx.reshape(xs.shape), sm.reshape(xs.shape)).to(z)

    def _score_products(self, x: Tensor, m: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        ax, am, sxx, sxm, smm = (float(v) for v in self._moments(t)[:5])
        mu, var, log_w = (v.to(x.device) for v in (self.mixture.means, self.mixture.variances,
                                                    self.mixture.weights.log()))  # (K, D), (K,)
        cxx, cxm, cmm = var * ax**2 + sxx, var * ax * am + sxm, var * am**2 + smm
        det = cxx * cmm - cxm**2
        ixx, ixm, imm = cmm / det, -cxm / det, cxx / det
        nx, nm = (ixx * ax + ixm * am) * mu, (ixm * ax + imm * am) * mu
        const = (ax * mu * nx + am * mu * nm).sum(1) + det.log().sum(1)
        quad = (x * x) @ ixx.T + 2 * (x * m) @ ixm.T + (m * m) @ imm.T - 2 * (x @ nx.T + m @ nm.T) + const
        log_terms = log_w - 0.5 * quad
        r = (log_terms - log_terms.logsumexp(dim=1, keepdim=True)).exp()
        sx = -(x * (r @ ixx) + m * (r @ ixm) - r @ nx)
        sm = -(x * (r @ ixm) + m * (r @ imm) - r @ nm)
        return sx, sm

    def log_prob(self, z: Tensor, t: Tensor | float) -> Tensor:
        """log p_t(z), shape (N,); differentiable in z (used to check the score by autograd)."""
        n = z.shape[0]
        x, m = (v.reshape(n, -1).double() for v in split(z))
        tt = _times(t, n)
        return torch.logsumexp(self.log_terms_and_score(x, m, tt)[0], dim=1)

    @torch.no_grad()
    def __call__(self, z: Tensor, t: Tensor | float) -> Tensor:
        """ε*(z, t) = −L_tᵀ ∇ log p_t(z)."""
        chol_t = self._moments(_times(t, z.shape[0]))[-1]
        return apply_block(-chol_t, self.score(z, t))


def _solve(eps_model: EpsModel, z: Tensor, t_start: float, t_end: float, rtol: float, atol: float
           ) -> tuple[Tensor, int]:
    """z(t_end) of the PSLD PF-ODE by float64 DOP853 in u = ln t, and the number of ε evaluations it took."""
    from scipy.integrate import solve_ivp

    process = eps_model.process
    shape = z.shape

    def rhs(u: float, flat: np.ndarray) -> np.ndarray:
        t = math.exp(u)
        zz = torch.from_numpy(flat).reshape(shape)
        return (t * process.pf_ode_drift(zz, eps_model(zz, t), t)).reshape(-1).numpy()

    sol = solve_ivp(rhs, (math.log(t_start), math.log(t_end)), z.double().reshape(-1).numpy(), method="DOP853",
                    rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"PF-ODE integration failed: {sol.message}")
    return torch.from_numpy(sol.y[:, -1]).reshape(shape), int(sol.nfev)


def pf_ode_solution(eps_model: EpsModel, z: Tensor, t_start: float, t_end: float, rtol: float = 1e-10,
                    atol: float = 1e-10) -> Tensor:
    """z(t_end) of the PSLD PF-ODE dz/dt = F z + K ε(z, t) from z(t_start) = z (float64 DOP853 in u = ln t)."""
    return _solve(eps_model, z, t_start, t_end, rtol, atol)[0]


def exact_endpoint(eps_model: PSLDMixtureEps, z: Tensor, rtol: float = 1e-10) -> tuple[Tensor, int]:
    """x of ``final_step`` from z(eval_eps) of the PF-ODE from z(T) = z, and the PF-ODE's number of ε evaluations."""
    p = eps_model.process
    end, nfev = _solve(eps_model, z, p.T, p.eval_eps, rtol, rtol)
    return p.data_part(final_step(eps_model, end, torch.tensor(p.eval_eps, dtype=torch.float64))), nfev
