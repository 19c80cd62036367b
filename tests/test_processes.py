"""Process math against closed forms computed independently in float64 numpy, and the FDM reference numbers."""

import math

import numpy as np
import pytest
import torch

from fastdiffusion.errors import UserError
from fastdiffusion.processes import EDM, FDM, VE, VP, make_process, process_from_config

SIGMAS = np.array([0.002, 0.01, 0.1, 0.5, 1.0, 3.0, 10.0, 40.0, 80.0])


def t64(a):
    return torch.tensor(a, dtype=torch.float64)


def s_fdm_np(sigma, lo, hi, m):
    tau = (sigma - lo) / (hi - lo)
    b = m * (0.1 * tau + 0.5 * 19.9 * tau**2)
    return np.exp(-b) * (1 + b)


@pytest.mark.parametrize(("sigma", "m1", "m2"), [(10, 0.987, 0.955), (20, 0.862, 0.629), (40, 0.280, 0.038),
                                                  (60, 0.023, 1.5e-4), (80, 4.8e-4, 3.9e-8)])
def test_s_fdm_matches_reference_numbers(sigma, m1, m2):
    # Values computed from sail-sg/FDM's formulas (reference/fdm.md section 2.3).
    for m, want in ((1.0, m1), (2.0, m2)):
        got = float(make_process("fdm-edm", multiplier=m).s_fdm(t64(sigma)))
        assert got == pytest.approx(want, rel=0.03)


@pytest.mark.parametrize("base", ["edm", "vp", "ve"])
@pytest.mark.parametrize("m", [1.0, 2.0, 3.5])
def test_s_fdm_closed_form_every_base(base, m):
    proc = make_process(f"fdm-{base}", multiplier=m)
    lo, hi = proc.sigma_min, proc.sigma_max
    sig = np.linspace(lo, hi, 23)
    np.testing.assert_allclose(proc.s_fdm(t64(sig)).numpy(), s_fdm_np(sig, lo, hi, m), rtol=1e-12, atol=1e-300)
    assert proc.precond(t64(sig)).c_in.numpy() == pytest.approx(s_fdm_np(sig, lo, hi, m), rel=1e-12)


def test_s_fdm_is_the_critically_damped_oscillator():
    """x(B) = e^-B (1 + B) solves x'' + 2x' + x = 0 with x(0) = 1, x'(0) = 0 (gamma^2 = 4 omega)."""
    b = torch.linspace(0.0, 12.0, 200, dtype=torch.float64, requires_grad=True)
    x = (-b).exp() * (1 + b)
    (dx,) = torch.autograd.grad(x.sum(), b, create_graph=True)
    (ddx,) = torch.autograd.grad(dx.sum(), b)
    assert torch.allclose(ddx + 2 * dx + x, torch.zeros_like(x), atol=1e-12)
    assert float(x[0].detach()) == 1.0 and abs(float(dx[0].detach())) < 1e-12


def test_ve_fdm_uses_the_multiplier():
    """Fix of the reference code's defect: its VE variant hard-codes m = 1."""
    sig = t64([10.0, 50.0])
    a = make_process("fdm-ve", multiplier=1.0).s_fdm(sig)
    b = make_process("fdm-ve", multiplier=2.0).s_fdm(sig)
    assert (b < a).all()
    np.testing.assert_allclose(b.numpy(), s_fdm_np(sig.numpy(), 0.02, 100.0, 2.0), rtol=1e-12)


def test_edm_preconditioning_closed_form():
    p = EDM().precond(t64(SIGMAS))
    sd = 0.5
    np.testing.assert_allclose(p.c_skip.numpy(), sd**2 / (SIGMAS**2 + sd**2), rtol=1e-13)
    np.testing.assert_allclose(p.c_out.numpy(), SIGMAS * sd / np.sqrt(SIGMAS**2 + sd**2), rtol=1e-13)
    np.testing.assert_allclose(p.c_in.numpy(), 1 / np.sqrt(SIGMAS**2 + sd**2), rtol=1e-13)
    np.testing.assert_allclose(p.c_noise.numpy(), np.log(SIGMAS) / 4, rtol=1e-13)
    np.testing.assert_allclose(EDM().loss_weight(t64(SIGMAS)).numpy(), (SIGMAS**2 + sd**2) / (SIGMAS * sd) ** 2,
                               rtol=1e-13)


def test_vp_schedule_and_preconditioning():
    vp = VP()
    assert vp.sigma_min == pytest.approx(0.0010005, rel=1e-4)
    assert vp.sigma_max == pytest.approx(152.17, rel=1e-4)
    t = np.linspace(1e-5, 1, 11)
    sig = np.sqrt(np.exp(0.5 * 19.9 * t**2 + 0.1 * t) - 1)
    np.testing.assert_allclose(vp.sigma(t64(t)).numpy(), sig, rtol=1e-12)
    np.testing.assert_allclose(vp.sigma_inv(t64(sig)).numpy(), t, rtol=1e-9)
    p = vp.precond(t64(sig))
    np.testing.assert_allclose(p.c_skip.numpy(), 1.0)
    np.testing.assert_allclose(p.c_out.numpy(), -sig, rtol=1e-13)
    np.testing.assert_allclose(p.c_in.numpy(), 1 / np.sqrt(sig**2 + 1), rtol=1e-13)
    np.testing.assert_allclose(p.c_noise.numpy(), 999 * t, rtol=1e-9)
    np.testing.assert_allclose(vp.scale(t64(sig)).numpy(), np.exp(-0.25 * 19.9 * t**2 - 0.5 * 0.1 * t), rtol=1e-12)


def test_ve_preconditioning():
    p = VE().precond(t64(SIGMAS))
    np.testing.assert_allclose(p.c_skip.numpy(), 1.0)
    np.testing.assert_allclose(p.c_out.numpy(), SIGMAS, rtol=1e-13)
    np.testing.assert_allclose(p.c_in.numpy(), 1.0)
    np.testing.assert_allclose(p.c_noise.numpy(), np.log(SIGMAS / 2), rtol=1e-13)


@pytest.mark.parametrize("base", ["edm", "vp", "ve"])
def test_fdm_changes_only_c_in(base):
    plain, fdm = make_process(base), make_process(f"fdm-{base}")
    a, b = plain.precond(t64(SIGMAS)), fdm.precond(t64(SIGMAS))
    for name in ("c_skip", "c_out", "c_noise"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.allclose(a.c_in, b.c_in)


def test_fdm_loss_warmup_clamp():
    fdm = make_process("fdm-edm", warmup_ite=100)
    assert fdm.loss_clamp(0) == pytest.approx(5.0)
    assert fdm.loss_clamp(50) == pytest.approx(50.0)  # 5 * 100^(1/2)
    assert fdm.loss_clamp(99) == pytest.approx(5 * 100 ** 0.99)
    assert math.isinf(fdm.loss_clamp(100))
    # The reference's multiplicative update c_{k+1} = c_k 100^(1/W) gives the same sequence.
    c = 5.0
    for k in range(100):
        assert fdm.loss_clamp(k) == pytest.approx(c, rel=1e-9)
        c *= 100 ** (1 / 100)
    sig = t64([0.01, 0.1, 1.0, 10.0])
    base_w = EDM().loss_weight(sig)
    assert torch.allclose(fdm.loss_weight(sig, 0), base_w.clamp(max=5.0))
    assert torch.equal(fdm.loss_weight(sig, 100), base_w)


def test_training_sigma_densities():
    g = torch.Generator().manual_seed(0)
    s = EDM().sample_sigma(200_000, g).log()
    assert float(s.mean()) == pytest.approx(-1.2, abs=0.02) and float(s.std()) == pytest.approx(1.2, abs=0.02)
    ve = VE().sample_sigma(100_000, g)
    assert float(ve.min()) >= 0.02 and float(ve.max()) <= 100.0
    u = (ve / 0.02).log() / math.log(100 / 0.02)
    assert float(u.mean()) == pytest.approx(0.5, abs=0.01)
    vp = VP()
    t = vp.sigma_inv(vp.sample_sigma(100_000, g))
    assert float(t.mean()) == pytest.approx(0.5, abs=0.01) and float(t.min()) >= 1e-5 * 0.999


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
