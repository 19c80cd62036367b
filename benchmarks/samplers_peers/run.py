"""Issue 20's mixture target: this library's deterministic EDM-family samplers, at fixed schedules and at a schedule
fitted per problem, sampler and NFE (``fit_schedule`` on tuning noise), against the deterministic samplers of
k-diffusion and diffusers, on fresh exact-score Gaussian mixtures that are not in the repository.

Protocol (written into results.json):

* Problems: one diagonal Gaussian mixture per seed, drawn by this script's own generator (``make_mixture``) in one of
  three shapes (well separated, overlapping, low-rank: each component spread along a few coordinates and nearly
  degenerate along the rest) in 2, 16 or 64 dimensions, on EDM's range sigma in [0.002, 80].
* Evaluation: ``--n-eval`` start points x_T = 80 n from the seed ``1000 seed + 1``; tuning: ``--n-tune`` start points
  from ``1000 seed + 2`` (disjoint draws). The exact endpoints D(x(sigma_min); sigma_min) come from the repository's
  exact PF-ODE solver (``bench.edm_exact.exact_state``, DOP853, rtol = atol = 1e-10, float64, then the exact
  denoiser). Two peers (k-diffusion ``dpm_fast``, diffusers ``DEISMultistepScheduler``) stop at x(sigma_min) without
  the final denoising; they are scored against that x(sigma_min).
* Ours: every ``deterministic_edm_samplers()`` entry on the Karras (rho 7) and log-SNR grids (the default schedule is
  one of them) and on the grid (and lambda-DDIM's lam) that ``fit_schedule`` fits to the exact denoiser from the tuning
  noise (``--max-evals`` sampler runs; reference: the library's own Heun-127 solve, or with ``--tune-reference exact``
  the exact endpoints of the tuning points); with ``--learn`` also the grid and per-step parameters that
  ``learn_schedule`` learns from the same noise and reference. Runs are float64 through ``run_counted`` (exactly NFE
  calls).
* Peers: k-diffusion's deterministic samplers on its Karras (rho 7) and exponential grids, built by
  ``get_sigmas_karras`` / ``get_sigmas_exponential`` in float64, ``dpm_fast`` on its own log-SNR grid; diffusers' EDM
  schedulers and its UniPC / DEIS multistep schedulers on the same two grids. Every peer's network calls are counted
  by wrapping the denoiser; a peer that cannot make an NFE exactly is n/a there.
* Metric: mean over evaluation points of the L2 distance to the exact endpoint (float64). Per problem and NFE: the best
  of ours (any schedule) / the best peer (any grid), and the same for ours on fixed schedules only.

Run from the repository root: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/samplers_peers/run.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # reference_samplers: k-diffusion's sampling module without its heavy __init__

from reference_samplers import load_k_diffusion_sampling  # noqa: E402

from fastdiffusion.bench.distances import endpoint_error  # noqa: E402
from fastdiffusion.bench.edm_exact import SIGMA_MAX, SIGMA_MIN, MixtureDenoiser, exact_endpoint, exact_state  # noqa: E402
from fastdiffusion.bench.provenance import provenance  # noqa: E402
from fastdiffusion.data.gmm import GaussianMixture  # noqa: E402
from fastdiffusion.processes import EDM  # noqa: E402
from fastdiffusion.samplers import get_sampler, make_sigmas  # noqa: E402
from fastdiffusion.samplers.counted import CountedModel, run_counted  # noqa: E402
from fastdiffusion.samplers.learned import ITERATIONS, learn_schedule, learnable_samplers  # noqa: E402
from fastdiffusion.samplers.registry import deterministic_edm_samplers  # noqa: E402
from fastdiffusion.samplers.tuning import DISTANCES, fit_schedule, reference_solve  # noqa: E402

OUT = Path(__file__).resolve().parent
PROCESS = EDM(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
RHO = 7.0
EXACT_RTOL = 1e-10
NFES = (3, 4, 5, 6, 8, 10)
TARGET_NFES = (5, 10)
TARGET = 0.5
DEFAULT_SEEDS = (7001, 7002, 7003, 7004, 7005, 7006)
# (dimension, shape) of the i-th seed: every dimension gets two shapes, every shape two dimensions.
LAYOUT = ((2, "separated"), (16, "overlapping"), (64, "lowrank"), (2, "overlapping"), (16, "lowrank"),
          (64, "separated"))
SHAPES = ("separated", "overlapping", "lowrank")
N_COMPONENTS = {2: 8, 16: 12, 64: 16}


# --------------------------------------------------------------------------------------------------- problems
def make_mixture(seed: int, dim: int, shape: str) -> GaussianMixture:
    """A fresh diagonal mixture from ``seed``: unequal weights w ~ exp(0.75 N(0, 1)), and

    * separated: means ~ N(0, I), stds 0.08 U(0.5, 1.5) per coordinate (modes many widths apart);
    * overlapping: means ~ N(0, 0.45^2 I), stds 0.45 U(0.5, 1.5) (modes that merge);
    * lowrank: means ~ N(0, 0.8^2 I); per component max(1, D/8) random coordinates with std 0.5 U(0.5, 1.5), the rest
      log-uniform in [0.001, 0.02] (each component close to a point mass on a small axis-aligned subspace).
    """
    g = torch.Generator().manual_seed(seed)

    def uniform(*size: int) -> Tensor:
        return torch.rand(*size, generator=g, dtype=torch.float64)

    def normal(*size: int) -> Tensor:
        return torch.randn(*size, generator=g, dtype=torch.float64)

    k = N_COMPONENTS.get(dim, 16)
    if shape == "separated":
        means, std = normal(k, dim), 0.08 * (0.5 + uniform(k, dim))
    elif shape == "overlapping":
        means, std = 0.45 * normal(k, dim), 0.45 * (0.5 + uniform(k, dim))
    elif shape == "lowrank":
        means = 0.8 * normal(k, dim)
        std = torch.exp(math.log(0.001) + math.log(20.0) * uniform(k, dim))
        active = uniform(k, dim).argsort(dim=1)[:, :max(1, dim // 8)]
        std.scatter_(1, active, 0.5 * (0.5 + uniform(k, active.shape[1])))
    else:
        raise ValueError(f"unknown mixture shape '{shape}': choose one of {', '.join(SHAPES)}")
    weights = torch.exp(0.75 * normal(k))
    return GaussianMixture(means, std**2, weights)


@dataclasses.dataclass
class Problem:
    name: str
    seed: int
    dim: int
    shape: str
    mixture: GaussianMixture
    model: MixtureDenoiser
    start: Tensor  # evaluation x_T = sigma_max n
    exact: Tensor  # D(x(sigma_min); sigma_min)
    exact_state: Tensor  # x(sigma_min)
    tune_noise: Tensor  # standard normal; fit_schedule scales it by sigma_max
    info: dict


def prepare(seed: int, dim: int, shape: str, n_eval: int, n_tune: int, log: Callable[[str], None]) -> Problem:
    mixture = make_mixture(seed, dim, shape)
    eval_seed, tune_seed = 1000 * seed + 1, 1000 * seed + 2
    start = SIGMA_MAX * torch.randn(n_eval, dim, generator=torch.Generator().manual_seed(eval_seed),
                                    dtype=torch.float64)
    tune_noise = torch.randn(n_tune, dim, generator=torch.Generator().manual_seed(tune_seed), dtype=torch.float64)
    t0 = time.perf_counter()
    state, nfev = exact_state(mixture, start, rtol=EXACT_RTOL)
    exact = MixtureDenoiser(mixture)(state, SIGMA_MIN)
    seconds = time.perf_counter() - t0
    name = f"s{seed}-{shape}{dim}"
    var = mixture.variances
    info = {"seed": seed, "dim": dim, "shape": shape, "n_components": mixture.n_components,
            "eval_seed": eval_seed, "tune_seed": tune_seed, "n_eval": n_eval, "n_tune": n_tune,
            "data_std_mean": round(float(mixture.variance().sqrt().mean()), 4),
            "component_std_range": [float(var.sqrt().min()), float(var.sqrt().max())],
            "weight_range": [float(mixture.weights.min()), float(mixture.weights.max())],
            "exact_nfev": nfev, "exact_seconds": round(seconds, 2),
            # how far the two exact targets are apart: what a missing final denoising costs
            "state_vs_endpoint_error": endpoint_error(state, exact),
            "state_denoised_vs_endpoint_max": float((MixtureDenoiser(mixture)(state, SIGMA_MIN) - exact).abs().max())}
    log(f"{name}: K={mixture.n_components}, exact DOP853 {nfev} evaluations, {seconds:.1f} s")
    return Problem(name, seed, dim, shape, mixture, MixtureDenoiser(mixture), start, exact, state, tune_noise, info)


# ------------------------------------------------------------------------------------------------------- ours
def run_ours(model: Callable, start: Tensor, name: str, sigmas: Tensor, nfe: int, **hyper: object) -> Tensor:
    """Our sampler in float64 through the counted run (raises unless it made exactly ``nfe`` calls)."""
    return run_counted(get_sampler(name), CountedModel(model, process=PROCESS), start.clone(), sigmas, nfe, **hyper)


def our_nfe_ok(name: str, nfe: int) -> bool:
    try:
        get_sampler(name).steps(nfe)
        return True
    except Exception:  # noqa: BLE001  (UserError: the sampler cannot make this NFE)
        return False


def our_grid(name: str, schedule: str, nfe: int) -> Tensor:
    return make_sigmas(schedule, get_sampler(name).steps(nfe), SIGMA_MIN, SIGMA_MAX, RHO)


# ------------------------------------------------------------------------------------------------------ peers
class Counter:
    """The EDM denoiser ``D(x, sigma)`` as a peer sees it, every call counted."""

    def __init__(self, model: Callable) -> None:
        self.model, self.calls = model, 0

    def __call__(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        self.calls += 1
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
        return self.model(x, sigma if len(sigma) > 1 else float(sigma[0])).to(x.dtype)


@contextlib.contextmanager
def float64_default():
    """k-diffusion builds its grids (and dpm_fast its log-SNR times) in the default dtype: make that float64."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def one_per_step(nfe: int) -> int | None:
    return nfe


def two_per_step(nfe: int) -> int | None:
    """2 calls per step and one for the Euler step to 0: NFE = 2 steps - 1."""
    return (nfe + 1) // 2 if nfe % 2 else None


@dataclasses.dataclass(frozen=True)
class Peer:
    """One peer sampler: ``run(counter, x_T, steps, grid) -> x``; ``steps(nfe)`` the steps that make ``nfe`` calls
    (None: it cannot); ``grids`` the grids it is run on; ``target``: 'endpoint' (D(x(sigma_min))) or 'state'
    (x(sigma_min), for samplers that end there)."""

    library: str
    name: str
    run: Callable[[Counter, Tensor, int, str], Tensor]
    steps: Callable[[int], int | None]
    grids: tuple[str, ...] = ("karras", "exponential")
    target: str = "endpoint"

    @property
    def label(self) -> str:
        return f"{self.library}:{self.name}"


def kd_sigmas(kd, grid: str, n: int) -> Tensor:
    with float64_default():
        if grid == "karras":
            return kd.get_sigmas_karras(n, SIGMA_MIN, SIGMA_MAX, rho=RHO)
        if grid == "exponential":
            return kd.get_sigmas_exponential(n, SIGMA_MIN, SIGMA_MAX)
    raise ValueError(grid)


def _no_noise(sigma: Tensor, sigma_next: Tensor) -> float:
    return 0.0  # eta = 0: the noise is multiplied by 0 (a noise sampler is passed so no Brownian tree is built)


def k_diffusion_peers() -> list[Peer]:
    kd = load_k_diffusion_sampling()

    def on_grid(fn: Callable, **kw: object) -> Callable[[Counter, Tensor, int, str], Tensor]:
        def run(model: Counter, x: Tensor, steps: int, grid: str) -> Tensor:
            with float64_default():
                return fn(model, x, kd_sigmas(kd, grid, steps), disable=True, **kw)
        return run

    def dpm_fast(model: Counter, x: Tensor, steps: int, grid: str) -> Tensor:
        with float64_default():
            return kd.sample_dpm_fast(model, x, SIGMA_MIN, SIGMA_MAX, steps, eta=0.0, disable=True)

    return [
        Peer("k-diffusion", "euler", on_grid(kd.sample_euler), one_per_step),
        Peer("k-diffusion", "heun", on_grid(kd.sample_heun), two_per_step),
        Peer("k-diffusion", "dpm_2", on_grid(kd.sample_dpm_2), two_per_step),
        Peer("k-diffusion", "lms", on_grid(kd.sample_lms), one_per_step),
        Peer("k-diffusion", "dpmpp_2s_ancestral(eta=0)",
             on_grid(kd.sample_dpmpp_2s_ancestral, eta=0.0, noise_sampler=_no_noise), two_per_step),
        Peer("k-diffusion", "dpmpp_sde(eta=0)", on_grid(kd.sample_dpmpp_sde, eta=0.0, noise_sampler=_no_noise),
             two_per_step),
        Peer("k-diffusion", "dpmpp_2m", on_grid(kd.sample_dpmpp_2m), one_per_step),
        Peer("k-diffusion", "dpmpp_2m_sde(eta=0,heun)",
             on_grid(kd.sample_dpmpp_2m_sde, eta=0.0, noise_sampler=_no_noise, solver_type="heun"), one_per_step),
        Peer("k-diffusion", "dpmpp_3m_sde(eta=0)", on_grid(kd.sample_dpmpp_3m_sde, eta=0.0, noise_sampler=_no_noise),
             one_per_step),
        # DPM-Solver-fast: its own grid (uniform in log sigma, orders 3..3,2,1 or 3..3,k) and no final denoising.
        Peer("k-diffusion", "dpm_fast(eta=0)", dpm_fast, one_per_step, grids=("own",), target="state"),
    ]


def _edm_scheduler_run(cls, **config: object) -> Callable[[Counter, Tensor, int, str], Tensor]:
    """A diffusers EDM scheduler on EDM's range, its state x in sigma-space (alpha = 1). The network output it expects
    (prediction_type 'epsilon', EDM preconditioning) is made from the exact denoiser by inverting its own affine
    ``precondition_outputs``; the start is x_T = 80 n (not diffusers' init_noise_sigma = sqrt(80^2 + 1))."""

    def run(model: Counter, x: Tensor, steps: int, grid: str, sigmas64: Tensor | None = None) -> Tensor:
        sched = cls(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, sigma_schedule=grid, prediction_type="epsilon",
                    final_sigmas_type="zero", **config)
        sched.set_timesteps(steps)
        if sigmas64 is not None:  # the sanity check: the same float64 grid as ours (diffusers' own is float32)
            sched.sigmas = sigmas64.clone()
        for i, t in enumerate(sched.timesteps):
            sched.scale_model_input(x, t)  # the scheduler's bookkeeping; the denoiser takes x and sigma itself
            sigma = sched.sigmas[sched.step_index]
            denoised = model(x, sigma.to(torch.float64))
            zero = torch.zeros_like(x)
            offset = sched.precondition_outputs(x, zero, sigma)  # c_skip x
            scale = sched.precondition_outputs(zero, torch.ones_like(x), sigma)  # c_out
            x = sched.step((denoised - offset) / scale, t, x).prev_sample
            assert sched.step_index == i + 1
        return x

    return run


def _vp_scheduler_run(cls, *, override: bool, **config: object) -> Callable[[Counter, Tensor, int, str], Tensor]:
    """A diffusers multistep scheduler of the VP (DDPM) family driven in sigma-space: its state is
    x_vp = x / sqrt(1 + sigma^2), its model output the data prediction D(x, sigma) (prediction_type 'sample'), and its
    updates use only ``scheduler.sigmas`` (alpha_t = 1/sqrt(1 + sigma^2), sigma_t = sigma alpha_t), so the grid is
    EDM's: through the scheduler's own ``sigma_min``/``sigma_max`` where it has them (UniPC), else written into
    ``scheduler.sigmas`` after ``set_timesteps`` (``override``; its timesteps then only index the steps)."""

    def run(model: Counter, x: Tensor, steps: int, grid: str, sigmas64: Tensor | None = None) -> Tensor:
        flags = {"use_karras_sigmas": grid == "karras", "use_exponential_sigmas": grid == "exponential"}
        if not override:
            flags.update(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
        sched = cls(prediction_type="sample", **flags, **config)
        sched.set_timesteps(steps)
        if sigmas64 is not None:
            sched.sigmas = sigmas64.clone()
        elif override:
            levels = make_sigmas("karras" if grid == "karras" else "logsnr", steps, SIGMA_MIN, SIGMA_MAX, RHO)[:-1]
            last = levels.new_zeros(1) if sched.sigmas[-1] == 0 else levels[-1:]  # keep the scheduler's final level
            sched.sigmas = torch.cat([levels, last]).to(torch.float32)
        assert math.isclose(float(sched.sigmas[0]), SIGMA_MAX, rel_tol=1e-6)
        assert math.isclose(float(sched.sigmas[steps - 1]), SIGMA_MIN, rel_tol=1e-6)
        scale = lambda s: (1 + s.to(torch.float64) ** 2).sqrt()  # noqa: E731  x_ve = x_vp * sqrt(1 + sigma^2)
        sample = x / scale(sched.sigmas[0])
        for i, t in enumerate(sched.timesteps):
            sample = sched.scale_model_input(sample, t)  # identity for these schedulers
            sigma = sched.sigmas[i]
            denoised = model(sample * scale(sigma), sigma.to(torch.float64))
            sample = sched.step(denoised, t, sample).prev_sample
            assert sched.step_index == i + 1
        return sample * scale(sched.sigmas[-1])

    return run


def diffusers_peers() -> list[Peer]:
    import diffusers

    peers = [Peer("diffusers", "EDMEulerScheduler", _edm_scheduler_run(diffusers.EDMEulerScheduler), one_per_step)]
    for order, solver in ((2, "midpoint"), (2, "heun"), (3, "midpoint")):
        name = f"EDMDPMSolverMultistepScheduler(order={order}" + (",heun)" if solver == "heun" else ")")
        peers.append(Peer("diffusers", name, _edm_scheduler_run(
            diffusers.EDMDPMSolverMultistepScheduler, solver_order=order, solver_type=solver,
            algorithm_type="dpmsolver++"), one_per_step))
    # UniPC ending at sigma = 0 (bh2) or at sigma_min (bh1, whose step to sigma = 0 gives NaN in diffusers 0.42: its
    # B(h) = h is infinite there; bh2 also run so): a last zero-length step whose call feeds the corrector of the step
    # before.
    for order in (2, 3):
        for solver, final in (("bh2", "zero"), ("bh2", "sigma_min"), ("bh1", "sigma_min")):
            name = f"UniPCMultistepScheduler(order={order},{solver}" + (",final sigma_min)" if final != "zero" else ")")
            peers.append(Peer("diffusers", name, _vp_scheduler_run(
                diffusers.UniPCMultistepScheduler, override=False, solver_order=order, solver_type=solver,
                final_sigmas_type=final), one_per_step, target="endpoint" if final == "zero" else "state"))
    for order in (2, 3):  # DEIS ends at sigma_min with a step of length 0 (its last call is spent on no step)
        peers.append(Peer("diffusers", f"DEISMultistepScheduler(order={order})", _vp_scheduler_run(
            diffusers.DEISMultistepScheduler, override=True, solver_order=order), one_per_step, target="state"))
    return peers


def run_peer(peer: Peer, model: Callable, start: Tensor, nfe: int, grid: str) -> Tensor | None:
    """The peer's output from ``start`` with exactly ``nfe`` counted calls (None when it cannot make ``nfe``)."""
    steps = peer.steps(nfe)
    if steps is None:
        return None
    counter = Counter(model)
    with torch.no_grad():
        x = peer.run(counter, start.clone(), steps, grid)
    if counter.calls != nfe:
        raise RuntimeError(f"{peer.label}@{grid}: {counter.calls} calls for {steps} steps, not NFE {nfe}")
    return x


def score(x: Tensor | None, prob: Problem, target: str = "endpoint") -> float | None:
    if x is None:
        return None
    x = x.to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        return math.inf
    return endpoint_error(x, prob.exact if target == "endpoint" else prob.exact_state)


# ---------------------------------------------------------------------------------------------------- sanity
def sanity(prob: Problem, peers: list[Peer], nfes: tuple[int, ...], log: Callable[[str], None]) -> dict:
    """Peers against our equivalent samplers on the same float64 grid, and each peer's error against NFE."""
    import diffusers

    kd = load_k_diffusion_sampling()
    x = prob.start[:64]
    model = prob.model
    out: dict = {"problem": prob.name, "points": len(x), "same_as_ours": {}, "error_vs_nfe": {}}

    def diff(a: Tensor, b: Tensor) -> float:
        return float((a.to(torch.float64) - b.to(torch.float64)).abs().max())

    pairs = []
    for grid, ours in (("karras", "karras"), ("exponential", "logsnr")):
        for n in (5, 10):
            sig = kd_sigmas(kd, grid, n)
            # ours is the same grid up to float32 rounding of ln sigma_max / ln sigma_min in schedules.log_snr
            out.setdefault("grid_vs_ours_max_rel", {})[f"{grid} {n}"] = float(
                ((sig - make_sigmas(ours, n, SIGMA_MIN, SIGMA_MAX, RHO))[:-1] / sig[:-1]).abs().max())
            mine = {s: run_ours(model, x, s, sig, 2 * n - 1 if s == "heun" else n)
                    for s in ("dpmpp-2m", "euler", "heun")}
            pairs += [
                (f"k-diffusion:dpmpp_2m == dpmpp-2m @{grid} {n} steps",
                 diff(kd.sample_dpmpp_2m(Counter(model), x.clone(), sig, disable=True), mine["dpmpp-2m"])),
                (f"k-diffusion:dpmpp_2m_sde(eta=0,midpoint) == dpmpp-2m @{grid} {n} steps",
                 diff(kd.sample_dpmpp_2m_sde(Counter(model), x.clone(), sig, eta=0.0, noise_sampler=_no_noise,
                                             disable=True), mine["dpmpp-2m"])),
                (f"k-diffusion:euler == euler @{grid} {n} steps",
                 diff(kd.sample_euler(Counter(model), x.clone(), sig, disable=True), mine["euler"])),
                (f"k-diffusion:heun == heun @{grid} {n} steps",
                 diff(kd.sample_heun(Counter(model), x.clone(), sig, disable=True), mine["heun"])),
                (f"diffusers:EDMDPMSolverMultistepScheduler(order=2) float64 grid == dpmpp-2m @{grid} {n} steps",
                 diff(_edm_scheduler_run(diffusers.EDMDPMSolverMultistepScheduler, solver_order=2)(
                     Counter(model), x.clone(), n, grid, sigmas64=sig), mine["dpmpp-2m"])),
                (f"diffusers:DPMSolverMultistepScheduler(order=2, VP state; its step casts the state to float32) "
                 f"float64 grid == dpmpp-2m @{grid} {n} steps",
                 diff(_vp_scheduler_run(diffusers.DPMSolverMultistepScheduler, override=True, solver_order=2,
                                        algorithm_type="dpmsolver++", final_sigmas_type="zero")(
                     Counter(model), x.clone(), n, grid, sigmas64=sig), mine["dpmpp-2m"])),
                (f"diffusers:UniPCMultistepScheduler(order=2,bh2) float64 grid == unipc(order=2) @{grid} {n} steps",
                 diff(_vp_scheduler_run(diffusers.UniPCMultistepScheduler, override=False, solver_order=2,
                                        solver_type="bh2", final_sigmas_type="zero")(
                     Counter(model), x.clone(), n, grid, sigmas64=sig),
                     run_ours(model, x, "unipc", sig, n, order=2))),
                (f"diffusers:EDMEulerScheduler (float32 inside) == euler @{grid} {n} steps",
                 diff(_edm_scheduler_run(diffusers.EDMEulerScheduler)(Counter(model), x.clone(), n, grid,
                                                                      sigmas64=sig), mine["euler"])),
            ]
    for label, value in pairs:
        out["same_as_ours"][label] = value
        log(f"  sanity {label}: max |diff| {value:.2e}")
    for peer in peers:  # the exact targets of these points are the first rows of the problem's
        target = (prob.exact if peer.target == "endpoint" else prob.exact_state)[:len(x)]
        for grid in peer.grids:
            errs = {}
            for nfe in sorted({*nfes, 15, 21, 41}):
                y = run_peer(peer, model, x, nfe, grid)
                errs[str(nfe)] = None if y is None else endpoint_error(y.to(torch.float64), target)
            out["error_vs_nfe"][f"{peer.label}@{grid}"] = errs
    return out


# ------------------------------------------------------------------------------------------------------- main
def best(rows: list[dict], keep: Callable[[dict], bool]) -> dict | None:
    cands = [r for r in rows if keep(r) and r["error"] is not None and math.isfinite(r["error"])]
    return min(cands, key=lambda r: r["error"]) if cands else None


def label(row: dict) -> str:
    return f"{row['sampler']}@{row['schedule']}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS),
                   help="one fresh mixture per seed; the i-th seed gets LAYOUT[i % 6] = (dimension, shape)")
    p.add_argument("--problems", nargs="+", metavar="SEED:DIM:SHAPE", help="explicit problems (replace --seeds)")
    p.add_argument("--n-eval", type=int, default=500)
    p.add_argument("--n-tune", type=int, default=256)
    p.add_argument("--nfe", type=int, nargs="+", default=list(NFES))
    p.add_argument("--max-evals", type=int, default=150, help="fit_schedule's sampler runs per fit")
    p.add_argument("--tune-reference", choices=("heun", "exact"), default="heun",
                   help="fit_schedule's target on the tuning points: the library's Heun-127 solve (default) or the "
                        "exact endpoints")
    p.add_argument("--fit-distance", choices=DISTANCES, default="rms",
                   help="fit_schedule's endpoint distance: pooled RMS (its default) or mean L2 (this script's metric)")
    p.add_argument("--no-fit", action="store_true", help="fixed schedules only")
    p.add_argument("--learn", action="store_true", help="also learn_schedule's grid and per-step parameters for the "
                   "samplers that have them (rows 'learned'; same reference and distance as the fits)")
    p.add_argument("--learn-iterations", type=int, default=ITERATIONS, help="learn_schedule's gradient steps")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--tag", default="", help="suffix of the output files (results{tag}.json / .md)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:7.1f}s] {msg}", flush=True)

    if args.problems:
        specs = [(int(s), int(d), shape) for s, d, shape in (item.split(":") for item in args.problems)]
    else:
        specs = [(seed, *LAYOUT[i % len(LAYOUT)]) for i, seed in enumerate(args.seeds)]
    nfes = tuple(sorted(args.nfe))
    peers = k_diffusion_peers() + diffusers_peers()
    ours = deterministic_edm_samplers()
    problems, rows, fits, sanity_out = {}, [], [], None
    for seed, dim, shape in specs:
        prob = prepare(seed, dim, shape, args.n_eval, args.n_tune, log)
        problems[prob.name] = prob.info
        if sanity_out is None:
            sanity_out = sanity(prob, peers, nfes, log)
        # ours at fixed schedules
        for name in ours:
            for schedule in dict.fromkeys([get_sampler(name).schedule, "karras", "logsnr"]):
                for nfe in nfes:
                    if not our_nfe_ok(name, nfe):
                        continue
                    x = run_ours(prob.model, prob.start, name, our_grid(name, schedule, nfe), nfe)
                    rows.append({"problem": prob.name, "dim": dim, "who": "ours", "sampler": name,
                                 "schedule": schedule + (" (default)" if schedule == get_sampler(name).schedule
                                                         else ""), "fixed": True, "nfe": nfe,
                                 "error": score(x, prob)})
        log("  ours at fixed schedules done")
        # ours at fitted schedules
        if not args.no_fit:
            t0 = time.perf_counter()
            ref = reference_solve(prob.model, prob.tune_noise, process=PROCESS)
            if args.tune_reference == "exact":
                tune_exact, _ = exact_endpoint(prob.mixture, SIGMA_MAX * prob.tune_noise, rtol=EXACT_RTOL)
                ref = dataclasses.replace(ref, endpoint=tune_exact.to(ref.endpoint.dtype))
            for name in ours:
                for nfe in nfes:
                    if not our_nfe_ok(name, nfe):
                        continue
                    t1 = time.perf_counter()
                    fit = fit_schedule(prob.model, sampler=name, nfe=nfe, noise=prob.tune_noise, process=PROCESS,
                                       reference=ref, max_evals=args.max_evals, distance=args.fit_distance)
                    x = run_ours(prob.model, prob.start, name, fit.sigmas, nfe, **fit.hyper)
                    err = score(x, prob)
                    rows.append({"problem": prob.name, "dim": dim, "who": "ours", "sampler": name,
                                 "schedule": "fitted", "fixed": False, "nfe": nfe, "error": err})
                    fits.append({"problem": prob.name, "sampler": name, "nfe": nfe, "sigmas": fit.sigmas.tolist(),
                                 "hyper": fit.hyper, "tune_value": fit.value, "start": fit.start,
                                 "start_values": fit.start_values, "evaluations": fit.evaluations,
                                 "eval_error": err, "seconds": round(time.perf_counter() - t1, 2)})
                if args.learn and name in learnable_samplers():
                    for nfe in nfes:
                        if nfe < 2:
                            continue
                        t1 = time.perf_counter()
                        fit = learn_schedule(prob.model, sampler=name, nfe=nfe, noise=prob.tune_noise,
                                             process=PROCESS, reference=ref, iterations=args.learn_iterations,
                                             distance=args.fit_distance)
                        x = run_ours(prob.model, prob.start, name, fit.sigmas, nfe, **fit.hyper)
                        err = score(x, prob)
                        rows.append({"problem": prob.name, "dim": dim, "who": "ours", "sampler": name,
                                     "schedule": "learned", "fixed": False, "nfe": nfe, "error": err})
                        fits.append({"problem": prob.name, "sampler": name, "nfe": nfe, "learned": True,
                                     "sigmas": fit.sigmas.tolist(), "hyper": fit.hyper, "tune_value": fit.value,
                                     "start": fit.start, "start_values": fit.start_values,
                                     "evaluations": fit.evaluations, "eval_error": err,
                                     "seconds": round(time.perf_counter() - t1, 2)})
            log(f"  fits done ({time.perf_counter() - t0:.0f} s)")
        # peers
        for peer in peers:
            for grid in peer.grids:
                for nfe in nfes:
                    x = run_peer(peer, prob.model, prob.start, nfe, grid)
                    rows.append({"problem": prob.name, "dim": dim, "who": peer.library, "sampler": peer.name,
                                 "schedule": grid, "fixed": True, "nfe": nfe,
                                 "error": score(x, prob, peer.target), "target": peer.target})
        log("  peers done")

    summary = []
    for name, info in problems.items():
        for nfe in nfes:
            here = [r for r in rows if r["problem"] == name and r["nfe"] == nfe]
            b_ours = best(here, lambda r: r["who"] == "ours")
            b_fixed = best(here, lambda r: r["who"] == "ours" and r["fixed"])
            b_peer = best(here, lambda r: r["who"] != "ours")
            summary.append({
                "problem": name, "dim": info["dim"], "shape": info["shape"], "nfe": nfe,
                "best_ours": label(b_ours), "best_ours_error": b_ours["error"],
                "best_ours_fixed": label(b_fixed), "best_ours_fixed_error": b_fixed["error"],
                "best_peer": f"{b_peer['who']}:{label(b_peer)}", "best_peer_error": b_peer["error"],
                "ratio": b_ours["error"] / b_peer["error"], "fixed_ratio": b_fixed["error"] / b_peer["error"]})
    verdict = {}
    for dim in sorted({info["dim"] for info in problems.values()}):
        sel = [s for s in summary if s["dim"] == dim and s["nfe"] in TARGET_NFES]
        verdict[str(dim)] = {"max_ratio_at_target_nfes": max(s["ratio"] for s in sel) if sel else None,
                             "met": bool(sel) and all(s["ratio"] <= TARGET for s in sel)}
    seconds = time.perf_counter() - t_start
    result = {
        "provenance": provenance("cpu"),
        "protocol": {
            "sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX, "rho": RHO, "nfe": list(nfes), "target_nfe": TARGET_NFES,
            "target_ratio": TARGET, "n_eval": args.n_eval, "n_tune": args.n_tune, "max_evals": args.max_evals,
            "tune_reference": args.tune_reference, "fit_distance": args.fit_distance, "fit": not args.no_fit,
            "learn": args.learn and not args.no_fit, "learn_iterations": args.learn_iterations if args.learn else None,
            "eval_noise": "x_T = 80 randn(n_eval, D) from seed 1000 seed + 1",
            "tune_noise": "randn(n_tune, D) from seed 1000 seed + 2 (fit_schedule scales it by 80)",
            "exact": "bench.edm_exact.exact_endpoint: DOP853 in u = ln sigma, rtol = atol = 1e-10, then "
                     "D(x; sigma_min); peers ending at x(sigma_min) (target 'state') against that solve's x(sigma_min)",
            "error": "mean over evaluation points of ||x - x_exact||_2, float64",
            "ours": ours, "ours_schedules": "karras, logsnr (the default is one of them), fitted"
                                            + (", learned (grid and per-step parameters)" if args.learn else ""),
            "peers": [{"peer": pr.label, "grids": list(pr.grids), "target": pr.target} for pr in peers],
            "not_driven": NOT_DRIVEN},
        "problems": problems, "summary": summary, "verdict": verdict, "sanity": sanity_out, "rows": rows,
        "fits": fits, "seconds": round(seconds, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"results{args.tag}.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / f"results{args.tag}.md").write_text(markdown(result))
    log(f"wrote {args.out / f'results{args.tag}.json'} and .md ({seconds:.0f} s)")
    return 0


NOT_DRIVEN = {
    "k-diffusion:dpm_adaptive": "adaptive step size: its NFE is not set by the caller",
    "k-diffusion:euler_ancestral, dpm_2_ancestral (eta=0)": "with eta = 0 the same steps as euler / dpm_2",
    "k-diffusion:dpmpp_2m_sde(eta=0, midpoint)": "the same update as dpmpp_2m (checked in the sanity block)",
    "diffusers:DPMSolverMultistepScheduler": "with dpmsolver++ and the EDM grid the same update as "
                                             "EDMDPMSolverMultistepScheduler (checked in the sanity block)",
    "diffusers:EulerDiscrete/HeunDiscrete/KDPM2Discrete/LMSDiscrete": "k-diffusion's samplers ported; run as "
                                                                    "k-diffusion's",
    "diffusers:UniPCMultistepScheduler(bh1) ending at sigma = 0": "NaN at the step to sigma = 0 (B(h) = h with "
                                                                 "h = inf); run ending at sigma_min instead",
    "diffusers:DPMSolverSinglestep, DDIM, PNDM, others": "not driven (no sigma-space mapping checked here)",
}


def _fmt(v: float | None) -> str:
    if v is None:
        return "n/a"
    if not math.isfinite(v):
        return "inf"
    return f"{v:.3g}"


def markdown(res: dict) -> str:
    prot, prov = res["protocol"], res["provenance"]
    lines = ["# Issue 20's mixture target: this library's samplers against k-diffusion and diffusers", "",
             f"Command: `{prov['command']}`; commit {prov['git_commit']}; {prov['device']}; {prov['timestamp']}; "
             f"{res['seconds']:.0f} s.", "",
             f"Fresh diagonal Gaussian mixtures (this script's generator, seeds below), EDM range sigma in "
             f"[{prot['sigma_min']}, {prot['sigma_max']}]. Error: {prot['error']}, over {prot['n_eval']} evaluation "
             f"points; exact: {prot['exact']}. Tuning: `fit_schedule` on {prot['n_tune']} other points "
             f"(disjoint seed), max_evals {prot['max_evals']}, reference {prot['tune_reference']}, distance "
             f"{prot.get('fit_distance', 'rms')}. "
             f"Ratio = best of ours (any schedule, fitted included) / best peer (any grid); fixed ratio = best of "
             f"ours on karras/logsnr only / best peer. Target: ratio <= {prot['target_ratio']} at NFE "
             f"{' and '.join(map(str, prot['target_nfe']))} on every problem.", ""]
    lines += ["| problem | D | shape | K | component std | exact DOP853 evals |", "|---|---|---|---|---|---|"]
    for name, info in res["problems"].items():
        lo, hi = info["component_std_range"]
        lines.append(f"| {name} | {info['dim']} | {info['shape']} | {info['n_components']} | {lo:.3g}..{hi:.3g} | "
                     f"{info['exact_nfev']} |")
    lines.append("")
    for nfe in prot["nfe"]:
        rows = [s for s in res["summary"] if s["nfe"] == nfe]
        if not rows:
            continue
        lines += [f"## NFE {nfe}" + (" (target)" if nfe in prot["target_nfe"] else ""), "",
                  "| problem | best ours (which) | error | best peer (which) | error | ratio | fixed-schedule ours "
                  "ratio (which) |", "|---|---|---|---|---|---|---|"]
        for s in rows:
            lines.append(f"| {s['problem']} | {s['best_ours']} | {_fmt(s['best_ours_error'])} | {s['best_peer']} | "
                         f"{_fmt(s['best_peer_error'])} | **{s['ratio']:.2f}** | {s['fixed_ratio']:.2f} "
                         f"({s['best_ours_fixed']}) |")
        lines.append("")
    lines += ["## Target per dimension (ratio <= 0.5 at NFE 5 and 10 on every problem)", "",
              "| D | max ratio at NFE 5, 10 | met |", "|---|---|---|"]
    for dim, v in res["verdict"].items():
        lines.append(f"| {dim} | {_fmt(v['max_ratio_at_target_nfes'])} | {'yes' if v['met'] else 'no'} |")
    lines += ["", "## Peers", ""]
    for peer in prot["peers"]:
        lines.append(f"- {peer['peer']} on {', '.join(peer['grids'])}" +
                     (" (ends at x(sigma_min): scored against the exact x(sigma_min))" if peer["target"] == "state"
                      else ""))
    lines += ["", "Not run:", ""] + [f"- {k}: {v}" for k, v in prot["not_driven"].items()]
    san = res.get("sanity") or {}
    if san:
        lines += ["", f"## Sanity ({san['problem']}, {san['points']} points, float64 grids)", "",
                  "| check | max abs difference |", "|---|---|"]
        lines += [f"| {k} | {v:.1e} |" for k, v in san["same_as_ours"].items()]
        cols = sorted({int(n) for errs in san["error_vs_nfe"].values() for n in errs})
        lines += ["", "Peer error against NFE (sanity problem, first 64 points):", "",
                  "| peer | " + " | ".join(f"NFE {n}" for n in cols) + " |",
                  "|---|" + "---|" * len(cols)]
        for k, errs in san["error_vs_nfe"].items():
            lines.append(f"| {k} | " + " | ".join(_fmt(errs.get(str(n))) for n in cols) + " |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
