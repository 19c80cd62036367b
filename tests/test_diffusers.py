"""Discrete-time models: the ``DiscreteVP`` process against k-diffusion's discrete wrappers, ``wrap_eps`` / ``wrap_v``
sampling an exact Gaussian score, and diffusers ``UNet2DModel`` pipelines (randomly initialised, ``save_pretrained``)
equal to their epsilon / v / x_0 formulas at the schedule's own sigmas."""

from __future__ import annotations

import importlib.util
import json
import math
import pickle
import sys
from pathlib import Path

import pytest
import torch
from reference_samplers import load_k_diffusion_sampling

import fastdiffusion as fd
from fastdiffusion.cli import main as cli_main
from fastdiffusion.errors import UserError
from fastdiffusion.processes import DiscreteVP, make_process, process_from_config
from fastdiffusion.processes.discrete_vp import ddpm_alphas_cumprod

SCHEDULES = [("linear", 1e-4, 0.02), ("scaled_linear", 0.00085, 0.012), ("squaredcos_cap_v2", 1e-4, 0.02)]


def k_diffusion_external():
    """k-diffusion's ``external.py`` (DiscreteEpsDDPMDenoiser, DiscreteVDDPMDenoiser) without its package __init__."""
    load_k_diffusion_sampling()  # registers the light package and its utils stand-in
    if "k_diffusion.external" not in sys.modules:
        root = Path(sys.modules["k_diffusion"].__path__[0])
        spec = importlib.util.spec_from_file_location("k_diffusion.external", root / "external.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["k_diffusion.external"] = module
        spec.loader.exec_module(module)
    return sys.modules["k_diffusion.external"]


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double().flatten(1), want.double().flatten(1)
    return float(((got - want).norm(dim=1) / want.norm(dim=1)).max())


# -- the process -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", SCHEDULES, ids=[s[0] for s in SCHEDULES])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_discrete_vp_equals_k_diffusion_between_the_discrete_sigmas(schedule, prediction):
    external = k_diffusion_external()
    alphas = torch.tensor(ddpm_alphas_cumprod(schedule[0], 1000, schedule[1], schedule[2]))

    def net(x, t):  # a network that depends on t smoothly: any fractional-t error shows
        return torch.sin(x * (1 + t.reshape(-1, 1, 1, 1) / 300)) + t.reshape(-1, 1, 1, 1) / 1000

    wrapped = (fd.wrap_eps if prediction == "epsilon" else fd.wrap_v)(net, alphas)
    reference = (external.DiscreteEpsDDPMDenoiser if prediction == "epsilon" else external.DiscreteVDDPMDenoiser)(
        net, alphas, quantize=False)
    if prediction == "epsilon":
        reference.get_eps = lambda x, t: net(x, t)
    else:
        reference.get_v = lambda x, t: net(x, t)
    lo, hi = wrapped.sampling_range()
    assert (lo, hi) == pytest.approx((float(reference.sigma_min), float(reference.sigma_max)), rel=1e-6)
    sigma = torch.exp(torch.linspace(math.log(lo), math.log(hi), 37))  # between and on the discrete sigmas
    x = torch.randn(37, 2, 3, 3, generator=torch.Generator().manual_seed(0)) * (sigma.reshape(-1, 1, 1, 1) + 1)
    t_ref = reference.sigma_to_t(sigma.double())
    assert torch.allclose(wrapped.process.timestep(sigma.double()), t_ref, atol=1e-3)
    with torch.no_grad():
        assert rel_err(wrapped(x, sigma), reference(x, sigma)) < 1e-4


def test_discrete_vp_is_a_process_with_a_json_config():
    alphas = ddpm_alphas_cumprod("linear", 50)
    process = make_process("discrete-vp", alphas_cumprod=alphas, prediction="sample")
    assert isinstance(process, DiscreteVP) and isinstance(process, fd.processes.Process)
    again = process_from_config(json.loads(json.dumps(process.config())))
    assert again.alphas_cumprod == process.alphas_cumprod and again.prediction == "sample"
    sigmas = process.sigmas()
    assert torch.allclose(process.timestep(sigmas), torch.arange(50, dtype=torch.float64), atol=1e-9)
    assert float(process.timestep(sigmas[:1] / 10)) == 0 and float(process.timestep(sigmas[-1:] * 10)) == 49
    draw = process.sample_sigma(1000, torch.Generator().manual_seed(0))
    assert set(torch.isin(draw, sigmas).tolist()) == {True}  # DDPM's training draw: the discrete sigmas only
    assert torch.allclose(process.loss_weight(sigmas), torch.ones(50, dtype=torch.float64))  # x_0-prediction
    for bad, message in [(dict(alphas_cumprod=[0.9, 0.95]), "decreasing"), (dict(alphas_cumprod=[1.0, 0.5]), "inside"),
                         (dict(alphas_cumprod=alphas, prediction="score"), "prediction 'score'")]:
        with pytest.raises(UserError, match=message):
            make_process("discrete-vp", **bad)


@pytest.mark.parametrize("wrap", ["eps", "v"])
def test_wrapped_exact_gaussian_network_samples_its_gaussian(wrap):
    """Data N(0, s^2): the exact epsilon / v of DDPM at timestep t, evaluated at alpha_bar(t) of the wrapper's own
    sigma(t); sampled, it follows the exact denoiser's trajectories over the schedule's sigma range."""
    s, alphas = 0.7, ddpm_alphas_cumprod("linear", 1000)
    process = DiscreteVP(alphas)

    def alpha_bar(t: torch.Tensor) -> torch.Tensor:  # alpha_bar at fractional t, log sigma linear in between
        i = t.floor().long().clamp(max=998)
        log_sigma = torch.lerp(process.log_sigmas[i], process.log_sigmas[i + 1], (t - i).double())
        return (1 / (1 + (2 * log_sigma).exp())).float().reshape(-1, 1)

    def eps(x, t):  # E[eps | x_t] for x_t = sqrt(a) x_0 + sqrt(1 - a) eps
        a = alpha_bar(t)
        return (1 - a).sqrt() * x / (a * s**2 + 1 - a)

    def v(x, t):  # v = sqrt(a) eps - sqrt(1 - a) x_0
        a = alpha_bar(t)
        x0 = a.sqrt() * s**2 * x / (a * s**2 + 1 - a)
        return a.sqrt() * eps(x, t) - (1 - a).sqrt() * x0

    def exact(x, sigma):  # the Gaussian's denoiser in sigma-space, D = s^2 / (s^2 + sigma^2) x
        return s**2 / (s**2 + sigma.reshape(-1, 1) ** 2) * x

    model = fd.wrap_eps(eps, alphas, data_shape=(2,)) if wrap == "eps" else fd.wrap_v(v, alphas, data_shape=(2,))
    lo, hi = model.sampling_range()
    noise = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0))
    for sampler, nfe in (("heun", 35), ("dpmpp-2m", 20), ("euler", 200)):
        x = fd.sample(model, noise, sampler=sampler, nfe=nfe)
        assert rel_err(x.T, fd.sample(exact, noise, sampler=sampler, nfe=nfe, sigma_min=lo, sigma_max=hi).T) < 1e-3
    assert float(x.std()) == pytest.approx(s, rel=0.02)  # 200 Euler steps: the Gaussian itself
    x = fd.generate(model, list(range(16)), batch=8, progress=False, sampler="euler", nfe=5)
    seeded = fd.SeededNoise(range(16))
    assert torch.equal(x, fd.sample(model, seeded.randn((2,), "cpu"), sampler="euler", nfe=5, noise_fn=seeded))
    with pytest.raises(UserError, match="'callable'.*cannot be saved"):
        fd.save_model(model, "never.safetensors")


def test_a_wrapped_conditional_callable_gets_one_hot_labels():
    seen = []

    def eps(x, t, y=None):
        seen.append(y)
        return 0.1 * x

    model = fd.wrap_eps(eps, ddpm_alphas_cumprod("linear", 100), data_shape=(2,), label_dim=3)
    fd.sample(model, torch.randn(3, 2), sampler="euler", nfe=2, class_labels=torch.tensor([0, 2, 1]))
    assert len(seen) == 2 and all(torch.equal(y, torch.eye(3)[[0, 2, 1]]) for y in seen)
    fd.sample(model, torch.randn(3, 2), sampler="euler", nfe=1)
    assert seen[-1] is None


# -- diffusers pipelines -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def diffusers():
    return pytest.importorskip("diffusers", reason="diffusers is not installed: pip install 'fastdiffusion[diffusers]'")


def _unet(diffusers, seed: int = 0, **kw):
    torch.manual_seed(seed)
    cfg = dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
               down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
               norm_num_groups=8, attention_head_dim=8)
    return diffusers.UNet2DModel(**{**cfg, **kw}).eval()


def _pipeline(diffusers, root: Path, unet, scheduler, safe: bool = True) -> Path:
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(root, safe_serialization=safe)
    return root


def _own_sigmas(scheduler) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.tensor([0, 1, 17, 250, 600, 999])
    a = scheduler.alphas_cumprod.double()[t]
    return t, ((1 - a) / a).sqrt().float()


@pytest.mark.parametrize("schedule", SCHEDULES, ids=[s[0] for s in SCHEDULES])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_diffusers_pipeline_equals_its_prediction_formula(diffusers, tmp_path, schedule, prediction):
    unet = _unet(diffusers)
    scheduler_cls = diffusers.DDIMScheduler if prediction == "sample" else diffusers.DDPMScheduler
    scheduler = scheduler_cls(beta_schedule=schedule[0], beta_start=schedule[1], beta_end=schedule[2],
                              prediction_type=prediction)
    root = _pipeline(diffusers, tmp_path / "pipe", unet, scheduler)
    model = fd.load_model(root)
    assert model.process.alphas_cumprod == scheduler.alphas_cumprod.tolist()
    t, sigma = _own_sigmas(scheduler)
    x = torch.randn(len(t), 3, 8, 8, generator=torch.Generator().manual_seed(1)) * (1 + sigma.reshape(-1, 1, 1, 1))
    s = sigma.double().reshape(-1, 1, 1, 1)
    with torch.no_grad():
        out = unet((x.double() / (s**2 + 1).sqrt()).float(), t).sample.double()
        got = model(x, sigma)
        unet_dir = fd.load_model(root / "unet")(x, sigma)
    if prediction == "epsilon":
        want = x - s * out
    elif prediction == "v_prediction":
        want = x / (s**2 + 1) - s / (s**2 + 1).sqrt() * out
    else:
        want = out
    assert float(out.norm()) > 0 and rel_err(got, want) < 1e-3
    assert torch.equal(got, unet_dir)  # the unet/ folder finds the pipeline's scheduler
    assert model.data_shape == (3, 8, 8) and model.sampling_range() == pytest.approx((float(sigma[0]),
                                                                                       float(sigma[-1])), rel=1e-5)


def test_diffusers_class_labels_learned_variance_and_bin_weights(diffusers, tmp_path):
    unet = _unet(diffusers, num_class_embeds=4, out_channels=6)
    scheduler = diffusers.DDPMScheduler(variance_type="learned_range")
    safe = fd.load_model(_pipeline(diffusers, tmp_path / "safe", unet, scheduler))
    pickled = fd.load_model(_pipeline(diffusers, tmp_path / "bin", unet, scheduler, safe=False))
    assert (tmp_path / "bin" / "unet" / "diffusion_pytorch_model.bin").is_file()
    t, sigma = _own_sigmas(scheduler)
    labels = torch.tensor([0, 3, 1, 2, 2, 0])
    x = torch.randn(len(t), 3, 8, 8, generator=torch.Generator().manual_seed(2))
    s = sigma.double().reshape(-1, 1, 1, 1)
    with torch.no_grad():
        eps = unet((x / (s**2 + 1).sqrt()).float(), t, class_labels=labels).sample.double()[:, :3]
        got = safe(x, sigma, torch.nn.functional.one_hot(labels, 4).float())
        assert torch.equal(pickled(x, sigma, torch.nn.functional.one_hot(labels, 4).float()), got)
    assert rel_err(got, x - s * eps) < 1e-3


def test_diffusers_models_sample_accelerate_and_make_trajectories(diffusers, tmp_path):
    root = _pipeline(diffusers, tmp_path / "pipe", _unet(diffusers), diffusers.DDPMScheduler())
    model = fd.load_model(root)
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = fd.sample(model, noise, sampler="heun", nfe=9)
        fd.accelerate(model, "cpu")
        assert torch.equal(fd.sample(model, noise, sampler="heun", nfe=9), plain)
    assert torch.isfinite(plain).all()
    out = tmp_path / "traj"
    assert cli_main(["distill", "trajectories", str(root), "--out", str(out), "--nfe", "5", "--times", "2",
                     "--seeds", "0-1", "--device", "cpu", "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["teacher"]["path"].endswith("diffusion_pytorch_model.safetensors")
    assert manifest["teacher"]["meta"]["process"]["name"] == "discrete-vp"


def test_diffusers_refusals(diffusers, tmp_path, capsys):
    root = _pipeline(diffusers, tmp_path / "pipe", _unet(diffusers), diffusers.DDPMScheduler())
    assert cli_main(["convert", str(root), str(tmp_path / "x.safetensors")]) == 2
    assert "'diffusers-unet2d') has no equivalent here" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()

    sched_file = root / "scheduler" / "scheduler_config.json"
    good = json.loads(sched_file.read_text())
    for change, message in [({"_class_name": "ScoreSdeVeScheduler"}, "not a discrete DDPM-family scheduler"),
                            ({"rescale_betas_zero_snr": True}, "sigma_max = infinity"),
                            ({"beta_schedule": "sigmoid"}, "beta schedule 'sigmoid' is not supported"),
                            ({"prediction_type": "score"}, "prediction 'score'")]:
        sched_file.write_text(json.dumps({**good, **change}))
        with pytest.raises(UserError, match=message):
            fd.load_model(root)
    sched_file.write_text(json.dumps(good))

    config = root / "unet" / "config.json"
    good = json.loads(config.read_text())
    for change, message in [({"_class_name": "UNet2DConditionModel"}, "'UNet2DConditionModel' is not supported"),
                            ({"time_embedding_type": "fourier"}, "score-SDE model"),
                            ({"class_embed_type": "timestep"}, "class_embed_type='timestep'")]:
        config.write_text(json.dumps({**good, **change}))
        with pytest.raises(UserError, match=message):
            fd.load_model(root)
    config.write_text(json.dumps(good))

    (root / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(UserError, match="no diffusion_pytorch_model"):
        fd.load_model(root)


def test_a_lone_unet_folder_uses_ddpm_defaults_and_a_bad_bin_is_refused(diffusers, tmp_path, capsys):
    unet = _unet(diffusers)
    unet.save_pretrained(tmp_path / "unet")
    model = fd.load_model(tmp_path / "unet")
    assert "DDPMScheduler defaults" in capsys.readouterr().err
    assert model.process.alphas_cumprod == diffusers.DDPMScheduler().alphas_cumprod.tolist()

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w')",)

    (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({"conv_in.weight": Evil()}, tmp_path / "unet" / "diffusion_pytorch_model.bin",
               pickle_module=pickle)
    with pytest.raises(UserError, match=r"refused to load \(the pickle calls __builtin__.exec"):
        fd.load_model(tmp_path / "unet")
    assert not marker.exists()
