"""The EDM-family processes (EDM, VP, VE and their FDM variants) against references computed independently here in
float64: EDM's Table 1 formulas (Karras et al. 2022), a numerical solution of FDM's momentum ODE, the reference's
loss-clamp recurrence, and the training sigma densities by a Kolmogorov-Smirnov test."""

import math
from decimal import Decimal

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from scipy.special import ndtr

from fastdiffusion.errors import UserError
from fastdiffusion.processes import FDM, make_process, process_from_config

SIGMAS = np.array([0.002, 0.01, 0.1, 0.5, 1.0, 3.0, 10.0, 40.0, 80.0])
BASES = ("edm", "vp", "ve")
# VP's schedule: sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1) with beta_d = 19.9, beta_min = 0.1.
VP_BETA_D, VP_BETA_MIN, VP_EPS_T = 19.9, 0.1, 1e-5


def t64(a):
    return torch.tensor(a, dtype=torch.float64)


def vp_sigma(t):
    return np.sqrt(np.expm1(0.5 * VP_BETA_D * np.square(t) + VP_BETA_MIN * t))


# Noise-level range of each base (reference/fdm.md section 2.3): the sigma_min, sigma_max that FDM's time tau uses.
RANGES = {"edm": (0.002, 80.0), "ve": (0.02, 100.0), "vp": (float(vp_sigma(VP_EPS_T)), float(vp_sigma(1.0)))}


def momentum_mean(tau: np.ndarray, m: float, beta_min: float = 0.1, beta_d: float = 19.9) -> np.ndarray:
    """x(tau) of the critically damped momentum process dx = m beta v dt, dv = -m beta (x + 2 v) dt with
    beta(t) = beta_min + beta_d t, x(0) = 1, v(0) = 0: float64 DOP853 with tight tolerances (no closed form used)."""

    def rhs(_t, y):
        rate = m * (beta_min + beta_d * _t)
        return [rate * y[1], -rate * (y[0] + 2 * y[1])]

    sol = solve_ivp(rhs, (0.0, float(tau.max())), [1.0, 0.0], method="DOP853", t_eval=tau, rtol=1e-13, atol=1e-24)
    assert sol.success
    return sol.y[0]


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("m", [1.0, 2.0, 3.5])
def test_fdm_kernel_mean_solves_the_critically_damped_oscillator(base, m):
    """c_in = scale = s_FDM(sigma) is the mean of the momentum ODE at tau = (sigma - sigma_min)/(sigma_max -
    sigma_min), for every base (VE included: the reference code ignores m there, this library does not)."""
    proc = make_process(f"fdm-{base}", multiplier=m)
    lo, hi = RANGES[base]
    assert (proc.sigma_min, proc.sigma_max) == pytest.approx((lo, hi), rel=1e-9, abs=0)
    sig = np.linspace(lo, hi, 23)
    want = momentum_mean((sig - lo) / (hi - lo), m)
    np.testing.assert_allclose(proc.s_fdm(t64(sig)).numpy(), want, rtol=1e-9, atol=0)
    np.testing.assert_allclose(proc.precond(t64(sig)).c_in.numpy(), want, rtol=1e-9, atol=0)
    np.testing.assert_allclose(proc.scale(t64(sig)).numpy(), want, rtol=1e-9, atol=0)


def test_fdm_schedule_constants_change_the_mean_as_the_ode_says():
    proc = make_process("fdm-edm", multiplier=1.5, fdm_beta_min=0.5, fdm_beta_d=8.0)
    sig = np.linspace(0.002, 80.0, 17)
    want = momentum_mean((sig - 0.002) / (80.0 - 0.002), 1.5, beta_min=0.5, beta_d=8.0)
    np.testing.assert_allclose(proc.s_fdm(t64(sig)).numpy(), want, rtol=1e-9, atol=0)


@pytest.mark.parametrize(("sigma", "m1", "m2"), [(10, "0.987", "0.955"), (20, "0.862", "0.629"), (40, "0.280", "0.038"),
                                                  (60, "0.023", "1.5e-4"), (80, "4.8e-4", "3.9e-8")])
def test_s_fdm_agrees_with_the_reference_table_to_its_printed_digits(sigma, m1, m2):
    """reference/fdm.md section 2.3 prints values of sail-sg/FDM's formula for EDM-FDM to 2-3 significant digits:
    each must agree to half a unit in its last printed digit."""
    for m, printed in ((1.0, m1), (2.0, m2)):
        got = float(make_process("fdm-edm", multiplier=m).s_fdm(t64(sigma)))
        half_unit = 0.5 * 10.0 ** Decimal(printed).as_tuple().exponent
        assert abs(got - float(printed)) <= half_unit, (sigma, m, got, printed)


def edm_table1(sigma, sd=0.5):
    """EDM's preconditioning and loss weight (Karras et al. 2022, Table 1)."""
    return {"c_skip": sd**2 / (sigma**2 + sd**2), "c_out": sigma * sd / np.sqrt(sigma**2 + sd**2),
            "c_in": 1 / np.sqrt(sigma**2 + sd**2), "c_noise": np.log(sigma) / 4,
            "weight": (sigma**2 + sd**2) / (sigma * sd) ** 2}


def vp_table1(sigma):
    t = (np.sqrt(VP_BETA_MIN**2 + 2 * VP_BETA_D * np.log1p(sigma**2)) - VP_BETA_MIN) / VP_BETA_D
    return {"c_skip": np.ones_like(sigma), "c_out": -sigma, "c_in": 1 / np.sqrt(sigma**2 + 1), "c_noise": 999 * t,
            "weight": 1 / sigma**2}


def ve_table1(sigma):
    return {"c_skip": np.ones_like(sigma), "c_out": sigma, "c_in": np.ones_like(sigma),
            "c_noise": np.log(0.5 * sigma), "weight": 1 / sigma**2}


TABLE1 = {"edm": edm_table1, "vp": vp_table1, "ve": ve_table1}


@pytest.mark.parametrize("base", BASES)
def test_preconditioning_and_loss_weight_follow_edm_table_1(base):
    """Bases: all four coefficients and lambda. FDM variants: the same c_skip, c_out, c_noise and (after warm-up)
    lambda; only c_in differs (checked against the momentum ODE above)."""
    want = TABLE1[base](SIGMAS)
    for proc in (make_process(base), make_process(f"fdm-{base}")):
        p = proc.precond(t64(SIGMAS))
        # c_noise to 1e-9: VP's sigma^-1 takes ln(1 + sigma^2) without log1p, a relative error ~1e-16 / sigma^2.
        for name, rtol in (("c_skip", 1e-12), ("c_out", 1e-12), ("c_noise", 1e-9)):
            np.testing.assert_allclose(getattr(p, name).numpy(), want[name], rtol=rtol, atol=0, err_msg=name)
        np.testing.assert_allclose(proc.loss_weight(t64(SIGMAS), 10**6).numpy(), want["weight"], rtol=1e-12)
        # Effective weight on the raw network F is 1 (EDM section 5): lambda c_out^2 = 1.
        np.testing.assert_allclose((proc.loss_weight(t64(SIGMAS), 10**6) * p.c_out**2).numpy(), 1.0, rtol=1e-12)
    np.testing.assert_allclose(make_process(base).precond(t64(SIGMAS)).c_in.numpy(), want["c_in"], rtol=1e-12)


def test_edm_preconditioning_gives_unit_variance_input_and_target():
    """EDM appendix B.6: for data of std sigma_data, Var(c_in (x0 + sigma n)) = 1 and the network's target
    (x0 - c_skip (x0 + sigma n)) / c_out has unit variance, with c_skip the variance-minimising choice."""
    for sd in (0.5, 1.3):
        p = make_process("edm", sigma_data=sd).precond(t64(SIGMAS))
        var_in = p.c_in**2 * (sd**2 + t64(SIGMAS) ** 2)
        var_target = ((1 - p.c_skip) ** 2 * sd**2 + p.c_skip**2 * t64(SIGMAS) ** 2) / p.c_out**2
        np.testing.assert_allclose(var_in.numpy(), 1.0, rtol=1e-12)
        np.testing.assert_allclose(var_target.numpy(), 1.0, rtol=1e-12)
        # d Var / d c_skip = 0 at the chosen c_skip: -2 (1 - c) sd^2 + 2 c sigma^2 = 0.
        grad = -2 * (1 - p.c_skip) * sd**2 + 2 * p.c_skip * t64(SIGMAS) ** 2
        np.testing.assert_allclose(grad.numpy(), 0.0, atol=1e-12)


def test_vp_sigma_round_trip_and_kernel_scale():
    vp = make_process("vp")
    t = np.concatenate([[VP_EPS_T], np.linspace(1e-3, 1, 40)])
    sig = vp_sigma(t)
    # 1e-9: the library takes exp(.) - 1 and ln(1 + .) where expm1/log1p keep full precision at small t.
    np.testing.assert_allclose(vp.sigma(t64(t)).numpy(), sig, rtol=1e-9)
    np.testing.assert_allclose(vp.sigma_inv(t64(sig)).numpy(), t, rtol=1e-9)
    s = np.geomspace(1e-3, 150.0, 50)
    np.testing.assert_allclose(vp.sigma(vp.sigma_inv(t64(s))).numpy(), s, rtol=1e-9)
    # The kernel mean of VP is exp(-1/2 int_0^t beta), beta(t) = beta_min + beta_d t.
    np.testing.assert_allclose(vp.scale(t64(sig)).numpy(), np.exp(-0.5 * (VP_BETA_MIN * t + 0.5 * VP_BETA_D * t**2)),
                               rtol=1e-12)
    for base in ("edm", "ve"):
        assert torch.equal(make_process(base).scale(t64(SIGMAS)), torch.ones(len(SIGMAS), dtype=torch.float64))


@pytest.mark.parametrize("base", BASES)
def test_fdm_samples_the_base_sigmas_and_range(base):
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    plain, fdm = make_process(base), make_process(f"fdm-{base}")
    assert torch.equal(fdm.sample_sigma(1000, g1), plain.sample_sigma(1000, g2))
    lo, hi = RANGES[base]
    assert fdm.sampling_range() == plain.sampling_range() == pytest.approx((max(lo, 0.002), min(hi, 80.0)), rel=1e-12,
                                                                                abs=0)


def clamp_recurrence(warmup: int, steps: int) -> list[float]:
    """The reference's warm-up clamp: c_0 = 5, c_{k+1} = c_k 100^(1/W), applied while k < W (float64)."""
    c, out = 5.0, []
    for _ in range(steps):
        out.append(c)
        c *= 100 ** (1 / warmup)
    return out


@pytest.mark.parametrize(("base", "warmup"), [("edm", 200), ("vp", 400), ("ve", 400), ("edm", 7)])
def test_fdm_loss_warmup_clamp(base, warmup):
    """lambda_k(sigma) = min(lambda(sigma), c_k) for k < W and lambda(sigma) from step W on (200/400/400 are the
    reference's CIFAR-10 defaults); the base process's weight never depends on the step."""
    fdm = make_process(f"fdm-{base}") if warmup != 7 else make_process(f"fdm-{base}", warmup_ite=warmup)
    assert fdm.warmup_ite == warmup
    sig = t64(np.geomspace(1e-3, 80.0, 41))
    lam = TABLE1[base](sig.numpy())["weight"]
    clamps = clamp_recurrence(warmup, warmup)
    for k in sorted({0, 1, warmup // 3, warmup // 2, warmup - 1}):
        assert fdm.loss_clamp(k) == pytest.approx(clamps[k], rel=1e-12)
        np.testing.assert_allclose(fdm.loss_weight(sig, k).numpy(), np.minimum(lam, clamps[k]), rtol=1e-12)
    for k in (warmup, warmup + 1, 10 * warmup):
        assert math.isinf(fdm.loss_clamp(k))
        np.testing.assert_allclose(fdm.loss_weight(sig, k).numpy(), lam, rtol=1e-12)
        assert torch.equal(make_process(base).loss_weight(sig, k), make_process(base).loss_weight(sig, 0))
    # At the start the clamp bites exactly where lambda > 5: EDM sigma < 1, VP/VE sigma < 1/sqrt(5).
    edge = 1.0 if base == "edm" else 5**-0.5
    np.testing.assert_array_equal((fdm.loss_weight(sig, 0) < t64(lam)).numpy(), sig.numpy() < edge)


def kolmogorov_smirnov(samples: np.ndarray, cdf) -> float:
    """sup_x |F_n(x) - F(x)| of the empirical distribution of ``samples`` against ``cdf``."""
    x = np.sort(samples)
    f = cdf(x)
    n = len(x)
    return float(max(np.max(np.arange(1, n + 1) / n - f), np.max(f - np.arange(n) / n)))


@pytest.mark.parametrize("name", ["edm", "vp", "ve", "fdm-edm"])
def test_training_sigma_densities(name):
    """The training sigma of each process has its defining law (EDM: ln sigma ~ N(-1.2, 1.2^2); VP: t(sigma) ~
    U(1e-5, 1); VE: ln(sigma / 0.02) / ln(100 / 0.02) ~ U(0, 1); FDM: its base's). Fixed seed; the bound is the
    Dvoretzky-Kiefer-Wolfowitz inequality P(D_n > e) <= 2 exp(-2 n e^2) at level 1e-6 for these n draws."""
    n = 100_000
    proc = make_process(name)
    sigma = proc.sample_sigma(n, torch.Generator().manual_seed(11)).numpy()
    if name.endswith("edm"):
        d = kolmogorov_smirnov(np.log(sigma), lambda x: ndtr((x + 1.2) / 1.2))
    elif name == "vp":
        t = (np.sqrt(VP_BETA_MIN**2 + 2 * VP_BETA_D * np.log1p(sigma**2)) - VP_BETA_MIN) / VP_BETA_D
        assert t.min() >= VP_EPS_T * (1 - 1e-9) and t.max() <= 1 + 1e-12
        d = kolmogorov_smirnov(t, lambda x: (x - VP_EPS_T) / (1 - VP_EPS_T))
    else:
        assert sigma.min() >= 0.02 and sigma.max() <= 100.0
        d = kolmogorov_smirnov(np.log(sigma / 0.02) / np.log(100 / 0.02), lambda x: x)
    assert d < math.sqrt(math.log(2 / 1e-6) / (2 * n)), d


@pytest.mark.parametrize("name", ["edm", "vp", "ve", "fdm-edm", "fdm-vp", "fdm-ve"])
def test_config_round_trip(name):
    proc = make_process(name, multiplier=1.5) if name.startswith("fdm") else make_process(name)
    again = process_from_config(proc.config())
    assert again.config() == proc.config()
    assert torch.equal(again.precond(t64(SIGMAS)).c_in, proc.precond(t64(SIGMAS)).c_in)
    assert isinstance(again, FDM) == name.startswith("fdm")


def test_bad_process_names_and_options():
    with pytest.raises(UserError, match="unknown process 'foo'"):
        make_process("foo")
    with pytest.raises(UserError, match="takes no FDM option"):
        make_process("edm", multiplier=2.0)
    with pytest.raises(UserError, match="bad option"):
        make_process("fdm-vp", sigma_data=3.0)
