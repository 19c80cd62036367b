"""Diagonal Gaussian mixtures with exact noisy densities, scores and denoisers.

A mixture p(x0) = Σ_k w_k N(x0; μ_k, diag(v_k)) stays a mixture under the EDM-family noising x = x0 + σ n:

    p_σ(x) = Σ_k w_k N(x; μ_k, diag(v_k + σ²)).

Everything a diffusion model tries to learn is then available in closed form:

    responsibilities   r_k(x) = w_k N(x; μ_k, v_k + σ²) / p_σ(x)      (softmax over k of the log terms)
    denoiser           D(x, σ) = E[x0 | x] = Σ_k r_k(x) [μ_k + v_k / (v_k + σ²) (x − μ_k)]
                                = x − σ² Σ_k r_k(x) (x − μ_k) / (v_k + σ²)
    score              ∇_x log p_σ(x) = (D(x, σ) − x) / σ² = −Σ_k r_k(x) (x − μ_k) / (v_k + σ²)

so a `GaussianMixture` serves as an exact-score denoiser for sampler tests and as a benchmark with a known
log-likelihood.
All arithmetic is float64; results come back in the input's dtype and device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from fastdiffusion.errors import UserError

__all__ = ["GaussianMixture"]

# Rows per chunk: one (rows, K, D) float64 temporary stays below this many elements (~32 MiB).
_CHUNK_ELEMENTS = 1 << 22


@dataclass(eq=False, repr=False)
class GaussianMixture:
    """A mixture of K axis-aligned Gaussians in D dimensions.

    Attributes:
        means: (K, D) component means μ_k.
        variances: (K, D) per-component diagonal variances v_k (≥ 0; zero is a point mass and then needs
            σ > 0).
        weights: (K,) mixture weights w_k (positive; normalised to sum to one on construction).

    All three are converted to float64 CPU tensors on construction.
    """

    means: Tensor
    variances: Tensor
    weights: Tensor

    def __post_init__(self) -> None:
        self.means = torch.as_tensor(self.means, dtype=torch.float64).detach().cpu()
        self.variances = torch.as_tensor(self.variances, dtype=torch.float64).detach().cpu()
        self.weights = torch.as_tensor(self.weights, dtype=torch.float64).detach().cpu()
        if self.means.ndim != 2 or self.means.shape[0] < 1 or self.means.shape[1] < 1:
            raise UserError(
                f"GaussianMixture: means must have shape (K, D) with K, D >= 1, got {tuple(self.means.shape)}"
            )
        if self.variances.shape != self.means.shape:
            raise UserError(
                f"GaussianMixture: variances must have the shape of means {tuple(self.means.shape)}, "
                f"got {tuple(self.variances.shape)}"
            )
        if self.weights.shape != (self.means.shape[0],):
            raise UserError(
                f"GaussianMixture: weights must have shape ({self.means.shape[0]},), "
                f"got {tuple(self.weights.shape)}"
            )
        if not (torch.isfinite(self.means).all() and torch.isfinite(self.variances).all()):
            raise UserError("GaussianMixture: means and variances must be finite")
        if (self.variances < 0).any():
            raise UserError("GaussianMixture: variances must be >= 0")
        if not torch.isfinite(self.weights).all() or (self.weights <= 0).any():
            raise UserError("GaussianMixture: weights must be finite and > 0")
        self.weights = self.weights / self.weights.sum()

    # -------------------------------------------- basic properties

    @property
    def dim(self) -> int:
        """Dimension D of one sample."""
        return int(self.means.shape[1])

    @property
    def n_components(self) -> int:
        """Number of components K."""
        return int(self.means.shape[0])

    def mean(self) -> Tensor:
        """Mixture mean E[x0] = Σ_k w_k μ_k, shape (D,), float64."""
        return self.weights @ self.means

    def variance(self) -> Tensor:
        """Per-coordinate variance Var[x0_d] = Σ_k w_k (v_kd + μ_kd²) − E[x0_d]², shape (D,), float64."""
        return self.weights @ (self.variances + self.means**2) - self.mean() ** 2

    def __repr__(self) -> str:
        return f"GaussianMixture(n_components={self.n_components}, dim={self.dim})"

    # ---------------------------------------------------- sampling

    def sample(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype | None = None
    ) -> Tensor:
        """Draw n samples x0 ~ p(x0): k ~ Categorical(w), x0 = μ_k + sqrt(v_k) ⊙ ε, ε ~ N(0, I).

        Returns an (n, D) CPU tensor in `dtype` (default float64). `generator` must be a CPU generator.
        """
        if n < 0:
            raise UserError(f"GaussianMixture.sample: n must be >= 0, got {n}")
        if n == 0:
            return torch.zeros(0, self.dim, dtype=dtype or torch.float64)
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[k] + self.variances[k].sqrt() * eps
        return x.to(dtype or torch.float64)

    # -------------------------------------- exact noisy quantities

    def log_prob(self, x: Tensor, sigma: float | Tensor = 0.0) -> Tensor:
        """log p_σ(x) = logsumexp_k [log w_k − ½ Σ_d (log 2π(v_kd + σ²) + (x_d − μ_kd)² / (v_kd + σ²))].

        Args:
            x: (N, ...) batch whose per-sample element count is D.
            sigma: noise level, a scalar or one value per row (any shape with N elements).

        Returns:
            (N,) log-densities in x's dtype. Differentiable with respect to x.
        """
        x2, s2 = self._prepare(x, sigma)
        out, rows = [], self._chunk_rows()
        for lo in range(0, x2.shape[0], rows):
            log_terms, _ = self._log_terms(x2[lo : lo + rows], s2[lo : lo + rows])
            out.append(torch.logsumexp(log_terms, dim=1))
        return (torch.cat(out) if out else x2.new_zeros(0)).to(x.dtype)

    def denoise(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """The exact posterior mean D(x, σ) = E[x0 | x0 + σ n = x] = x − σ² Σ_k r_k(x) (x − μ_k) / (v_k + σ²).

        The optimal denoiser in the EDM / k-diffusion convention: it can stand in for a trained network.
        At σ = 0 it returns x exactly.

        Args:
            x: (N, ...) batch whose per-sample element count is D (e.g. (N, D), or (N, 1, 8, 8) for D = 64).
            sigma: scalar or one value per row (any shape with N elements, e.g. (N,) or (N, 1, 1, 1)).

        Returns:
            Tensor of x's shape, dtype and device.
        """
        x2, s2 = self._prepare(x, sigma)
        with torch.no_grad():
            d = x2 + s2 * self._score_flat(x2, s2)
        return d.reshape(x.shape).to(x.dtype)

    def score(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """The exact score ∇_x log p_σ(x) = (D(x, σ) − x) / σ² = −Σ_k r_k(x) (x − μ_k) / (v_k + σ²).

        Computed from the right-hand form, which needs no division by σ² (so σ = 0 is fine when all v_k > 0).
        Same argument conventions as `denoise`.
        """
        x2, s2 = self._prepare(x, sigma)
        with torch.no_grad():
            g = self._score_flat(x2, s2)
        return g.reshape(x.shape).to(x.dtype)

    # --------------------------------------------------- factories

    @classmethod
    def random(
        cls,
        dim: int,
        n_components: int,
        generator: torch.Generator | None = None,
        seed: int = 0,
        spread: float = 1.0,
        component_std: float = 0.3,
    ) -> GaussianMixture:
        """A random mixture: μ_k ~ N(0, spread² I); per-coordinate std_kd = component_std · U(0.5, 1.5);
        w_k ∝ U(1, 2) (so no component is negligible).

        Uses `generator` if given, otherwise a fresh CPU generator seeded with `seed`.
        """
        if dim < 1 or n_components < 1:
            raise UserError(
                f"GaussianMixture.random: dim and n_components must be >= 1, got {dim}, {n_components}"
            )
        if spread < 0 or component_std <= 0:
            raise UserError(
                f"GaussianMixture.random: need spread >= 0 and component_std > 0, "
                f"got {spread}, {component_std}"
            )
        g = generator if generator is not None else torch.Generator().manual_seed(seed)
        means = spread * torch.randn(n_components, dim, generator=g, dtype=torch.float64)
        std = component_std * (0.5 + torch.rand(n_components, dim, generator=g, dtype=torch.float64))
        weights = 1.0 + torch.rand(n_components, generator=g, dtype=torch.float64)
        return cls(means, std**2, weights)

    @classmethod
    def ring2d(cls, n_components: int = 8, component_std: float = 0.1) -> GaussianMixture:
        """The classic 2-D toy: `n_components` equal-weight isotropic Gaussians evenly spaced on a circle.

        Radius r = sqrt(2 (1 − component_std²)), so each coordinate has variance r²/2 + std² = 1 (for K ≥ 3).
        """
        if n_components < 1 or not 0 < component_std < 1:
            raise UserError(
                f"GaussianMixture.ring2d: need n_components >= 1 and 0 < component_std < 1, "
                f"got {n_components}, {component_std}"
            )
        radius = math.sqrt(2.0 * (1.0 - component_std**2))
        angle = torch.arange(n_components, dtype=torch.float64) * (2 * math.pi / n_components)
        means = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
        return cls(
            means, torch.full_like(means, component_std**2), torch.ones(n_components, dtype=torch.float64)
        )

    @classmethod
    def benchmark64(cls) -> GaussianMixture:
        """A fixed 64-D benchmark: `random(64, 16, seed=64, spread=0.9, component_std=0.3)`.

        Per-coordinate variance ≈ 0.9² + 0.3² ≈ 0.9, means ~10 apart against component widths ~0.3: well
        separated modes with unequal weights and anisotropic components, so mode dropping and mis-weighting
        are measurable.
        """
        return cls.random(64, 16, seed=64, spread=0.9, component_std=0.3)

    # --------------------------------------------------- internals

    def _prepare(self, x: Tensor, sigma: float | Tensor) -> tuple[Tensor, Tensor]:
        """Flatten x to (N, D) float64 and sigma to an (N, 1) column of σ²."""
        if not isinstance(x, Tensor) or x.ndim < 2 or math.prod(x.shape[1:]) != self.dim:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise UserError(
                f"GaussianMixture: x must be an (N, ...) tensor with {self.dim} values per row, got {shape}"
            )
        n = x.shape[0]
        x2 = x.reshape(n, self.dim).to(torch.float64)
        s = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
        if s.numel() == 1:
            s = s.reshape(1).expand(n)
        elif s.numel() == n:
            s = s.reshape(n)
        else:
            raise UserError(
                f"GaussianMixture: sigma must be a scalar or have one value per row ({n}), "
                f"got {tuple(s.shape)}"
            )
        return x2, (s**2).unsqueeze(1)

    def _chunk_rows(self) -> int:
        return max(1, _CHUNK_ELEMENTS // (self.n_components * self.dim))

    def _params(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        return self.means.to(device), self.variances.to(device), self.weights.to(device).log()

    def _log_terms(self, x: Tensor, s2: Tensor) -> tuple[Tensor, Tensor]:
        """Per-component log w_k N(x; μ_k, v_k + σ²), shape (n, K), and v_k + σ², (n, K, D)."""
        mu, var, log_w = self._params(x.device)
        total = var.unsqueeze(0) + s2.unsqueeze(2)  # (n, K, D)
        diff = x.unsqueeze(1) - mu.unsqueeze(0)  # (n, K, D)
        quad = (diff.square() / total + torch.log(2 * math.pi * total)).sum(dim=2)
        return log_w.unsqueeze(0) - 0.5 * quad, total

    def _score_flat(self, x: Tensor, s2: Tensor) -> Tensor:
        """−Σ_k r_k (x − μ_k) / (v_k + σ²) for flat float64 x (N, D) and σ² column (N, 1)."""
        mu = self.means.to(x.device)
        out = []
        rows = self._chunk_rows()
        for lo in range(0, x.shape[0], rows):
            xc = x[lo : lo + rows]
            log_terms, total = self._log_terms(xc, s2[lo : lo + rows])
            r = torch.softmax(log_terms, dim=1)  # (n, K), stable: subtracts the row max
            out.append(-(r.unsqueeze(2) * (xc.unsqueeze(1) - mu.unsqueeze(0)) / total).sum(dim=1))
        return torch.cat(out) if out else torch.zeros_like(x)
