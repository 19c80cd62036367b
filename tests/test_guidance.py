"""Classifier-free guidance: D = D_u + W (D_c - D_u) against exact Gaussian-mixture denoisers mixed by hand, one
batched network call per step, per-seed reproducibility with seed-drawn classes, every EDM-family sampler guided,
and the errors of labels that do not fit the model."""

import json

import pytest
import torch
from safetensors import safe_open

import fastdiffusion as fd
from fastdiffusion.data.gmm import GaussianMixture
from fastdiffusion.errors import UserError
from fastdiffusion.guidance import (
    Guided,
    classes_for_seeds,
    guided_model,
    network_evaluations,
    parse_class,
    parse_interval,
    seed_classes,
)
from fastdiffusion.models import build_model
from fastdiffusion.nets import net_config
from fastdiffusion.processes import make_process
from fastdiffusion.samplers import SAMPLERS
from fastdiffusion.sampling import network_levels, plan_sampling, sampled_guidance
from fastdiffusion.seeds import SeededNoise

MIX = GaussianMixture.ring2d(4)
PARTS = [GaussianMixture(MIX.means[k:k + 1], MIX.variances[k:k + 1], MIX.weights[k:k + 1]) for k in range(4)]


class LabelReadingDenoiser:
    """A fake conditional model: label row e_k -> the exact denoiser of mixture component k alone, the all-zero row ->
    the whole mixture's; every call is recorded (rows, labels)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, torch.Tensor]] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.shape[0], labels.clone()))
        out = torch.empty_like(x)
        for i in range(x.shape[0]):
            part = MIX if not labels[i].any() else PARTS[int(labels[i].argmax())]
            out[i:i + 1] = part.denoise(x[i:i + 1], sigma[i:i + 1])
        return out


def conditional_only(classes: torch.Tensor):
    """D_c as a bare D(x, sigma): row i is component classes[i]'s exact denoiser."""
    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return torch.cat([PARTS[int(classes[i])].denoise(x[i:i + 1], sigma[i:i + 1]) for i in range(x.shape[0])])
    return denoise


CLASSES = torch.tensor([0, 3, 1, 1, 2, 0])
ONE_HOT = torch.nn.functional.one_hot(CLASSES, 4).float()


@pytest.mark.parametrize("w", [0.0, 0.5, 2.0, 3.5])
def test_guided_denoiser_is_the_hand_mixed_formula_from_one_batched_call(w):
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.05, 0.3, 1.0, 2.5, 7.0, 40.0])
    fake = LabelReadingDenoiser()
    d = Guided(fake, ONE_HOT, w)(x, sigma)
    d_c = torch.cat([PARTS[int(k)].denoise(x[i:i + 1], sigma[i:i + 1]) for i, k in enumerate(CLASSES)])
    d_u = torch.cat([MIX.denoise(x[i:i + 1], sigma[i:i + 1]) for i in range(6)])
    assert torch.equal(d, d_u + w * (d_c - d_u))
    assert torch.allclose(d.double(), (1 - w) * d_u.double() + w * d_c.double(), atol=1e-5)
    assert len(fake.calls) == 1 and fake.calls[0][0] == 12  # conditional and unconditional halves in one call
    assert torch.equal(fake.calls[0][1], torch.cat([ONE_HOT, torch.zeros(6, 4)]))
    if w not in (0.0, 1.0):
        assert not torch.allclose(d, d_c) and not torch.allclose(d, d_u)  # the toy tells the branches apart


def test_guidance_one_is_the_plain_conditional_with_a_single_call():
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(1))
    sigma = torch.full((6,), 0.7)
    fake = LabelReadingDenoiser()
    assert torch.equal(Guided(fake, ONE_HOT, 1.0)(x, sigma), conditional_only(CLASSES)(x, sigma))
    assert [rows for rows, _ in fake.calls] == [6]
    assert network_evaluations(35, 1.0) == 35 and network_evaluations(35, None) == 35
    assert network_evaluations(35, 2.0) == 70 and network_evaluations(35, 0.0) == 70


def test_interval_guidance_mixes_inside_the_interval_and_is_the_conditional_model_outside():
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(2))
    sigma = torch.tensor([0.05, 0.3, 1.0, 2.5, 7.0, 40.0])
    d_c = conditional_only(CLASSES)(x, sigma)
    d_u = torch.cat([MIX.denoise(x[i:i + 1], sigma[i:i + 1]) for i in range(6)])
    fake = LabelReadingDenoiser()
    d = Guided(fake, ONE_HOT, 2.5, interval=(0.3, 7.0))(x, sigma)
    inside = torch.tensor([False, False, True, True, True, False])  # (0.3, 7]: open below, closed above
    assert torch.equal(d[inside], (d_u + 2.5 * (d_c - d_u))[inside]) and torch.equal(d[~inside], d_c[~inside])
    assert [rows for rows, _ in fake.calls] == [12]
    fake = LabelReadingDenoiser()
    assert torch.equal(Guided(fake, ONE_HOT, 2.5, interval=(50.0, 80.0))(x, sigma), d_c)
    assert [rows for rows, _ in fake.calls] == [6]  # no row inside: the conditional half alone


@pytest.mark.parametrize(("name", "hyper"), [("heun", {}), ("heun", {"churn": 9}), ("dpmpp-2m", {}), ("euler", {})])
def test_interval_guidance_counts_the_network_evaluations_it_makes(name, hyper):
    nfe = _valid_nfe(SAMPLERS[name])
    seeds = list(range(6))
    noise = SeededNoise(seeds).randn((2,))
    fake = LabelReadingDenoiser()
    interval = (0.5, 10.0)
    x = fd.sample(fake, noise, sampler=name, nfe=nfe, class_labels=ONE_HOT, guidance=2.0, guidance_interval=interval,
                  noise_fn=SeededNoise(seeds), **hyper)
    made = sum(rows for rows, _ in fake.calls) // 6
    protocol = sampled_guidance(fake, ONE_HOT, 2.0, interval, sampler=name, nfe=nfe, **hyper)
    assert nfe < made < 2 * nfe and protocol["network_evaluations"] == made
    assert protocol["guidance_interval"] == [0.5, 10.0] and protocol["class"] == "per-seed"
    levels = network_levels(plan_sampling(fake, sampler=name, nfe=nfe, **hyper))
    assert len(levels) == nfe and levels[0] > 79.999 and all(s > 0 for s in levels)  # churn raises the first
    # an interval holding every level is plain guidance; one holding none is the conditional model
    whole = fd.sample(LabelReadingDenoiser(), noise, sampler=name, nfe=nfe, class_labels=ONE_HOT, guidance=2.0,
                      guidance_interval=(0.0, float("inf")), noise_fn=SeededNoise(seeds), **hyper)
    plain = fd.sample(LabelReadingDenoiser(), noise, sampler=name, nfe=nfe, class_labels=ONE_HOT, guidance=2.0,
                      noise_fn=SeededNoise(seeds), **hyper)
    none = fd.sample(LabelReadingDenoiser(), noise, sampler=name, nfe=nfe, class_labels=ONE_HOT, guidance=2.0,
                     guidance_interval=(300.0, 400.0), noise_fn=SeededNoise(seeds), **hyper)
    alone = fd.sample(conditional_only(CLASSES), noise, sampler=name, nfe=nfe, noise_fn=SeededNoise(seeds), **hyper)
    assert torch.equal(whole, plain) and torch.equal(none, alone)
    assert not torch.allclose(x, plain) and not torch.allclose(x, alone)


def test_network_levels_leave_out_the_analytic_first_call():
    plan = plan_sampling(conditional_only(CLASSES), sampler="euler", nfe=4)
    assert network_levels(plan) == pytest.approx(plan.sigmas[:-1].tolist())
    afs = plan_sampling(conditional_only(CLASSES), sampler="euler", nfe=4, afs=True)
    assert len(afs.sigmas) == 6 and network_levels(afs) == pytest.approx(afs.sigmas[1:-1].tolist())


@pytest.mark.parametrize(("text", "needle"), [("1", "two noise levels"), ("a,b", "two noise levels"),
                                              ("2,1", "0 <= LO < HI"), ("-1,2", "0 <= LO < HI"),
                                              ("1,1", "0 <= LO < HI")])
def test_bad_guidance_intervals_are_refused(text, needle):
    with pytest.raises(UserError, match=needle):
        parse_interval(text)


def test_guidance_interval_needs_a_class_and_an_edm_family_model():
    assert parse_interval("0.3,5") == (0.3, 5.0) and parse_interval(None) is None
    with pytest.raises(UserError, match="--guidance-interval needs --class"):
        guided_model(conditional_only(CLASSES), "edm", None, None, 6, (0.3, 5.0))
    with pytest.raises(UserError, match="needs an EDM-family model"):
        guided_model(conditional_only(CLASSES), "psld", ONE_HOT, 2.0, 6, (0.3, 5.0))


def _valid_nfe(spec) -> int:
    for nfe in range(5, 12):
        try:
            spec.steps(nfe)
            return nfe
        except UserError:
            continue
    raise AssertionError(f"no NFE in 5..11 for {spec.name}")


EDM_SAMPLERS = [(n, {}) for n in sorted(n for n, s in SAMPLERS.items() if s.family == "edm")] + [("heun", {"churn": 9})]


@pytest.mark.parametrize(("name", "hyper"), EDM_SAMPLERS)
def test_every_edm_sampler_runs_guided_with_one_batched_call_per_nfe(name, hyper):
    nfe = _valid_nfe(SAMPLERS[name])
    seeds = list(range(6))
    noise = SeededNoise(seeds).randn((2,))
    fake = LabelReadingDenoiser()
    guided = fd.sample(fake, noise, sampler=name, nfe=nfe, class_labels=ONE_HOT, guidance=2.5,
                       noise_fn=SeededNoise(seeds), **hyper)
    assert [rows for rows, _ in fake.calls] == [12] * nfe and torch.isfinite(guided).all()
    # W = 1 through the wrapper is exactly the conditional model sampled on its own, one 6-row call per NFE
    fake = LabelReadingDenoiser()
    plain = fd.sample(fake, noise, sampler=name, nfe=nfe, class_labels=ONE_HOT, noise_fn=SeededNoise(seeds),
                      **hyper)
    alone = fd.sample(conditional_only(CLASSES), noise, sampler=name, nfe=nfe, noise_fn=SeededNoise(seeds), **hyper)
    assert [rows for rows, _ in fake.calls] == [6] * nfe and torch.equal(plain, alone)
    assert not torch.allclose(plain, guided)


def tiny_model(process: str = "edm", label_dim: int = 10, channels: int = 1):
    """A tiny 8-px model with K = label_dim classes, its weights moved off their zero init."""
    meta = {"process": make_process(process).config(),
            "net": net_config("ddpmpp-tiny", in_channels=channels, img_resolution=8, label_dim=label_dim),
            "data_shape": [1, 8, 8]}
    torch.manual_seed(0)
    model = build_model(meta).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # move the zero-initialised output layers away from zero so labels change the output
        for p in model.net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


@pytest.fixture(scope="module")
def tiny_conditional():
    return tiny_model()


def _record_net_calls(model):
    calls = []
    model.net.register_forward_hook(lambda net, args, out: calls.append((args[0].shape[0], args[2].clone())))
    return calls


def test_a_real_network_sees_one_call_of_conditional_and_zero_labels():
    model = tiny_model()
    calls = _record_net_calls(model)
    with torch.no_grad():
        fd.sample(model, torch.randn(3, 1, 8, 8), sampler="euler", nfe=4, class_labels=torch.tensor([7, 0, 9]),
                  guidance=3.0)
    assert len(calls) == 4
    expect = torch.cat([torch.nn.functional.one_hot(torch.tensor([7, 0, 9]), 10).float(), torch.zeros(3, 10)])
    assert all(rows == 6 and torch.equal(labels, expect) for rows, labels in calls)


def test_random_classes_are_per_seed_and_reproducible_across_batches(tiny_conditional):
    model = tiny_conditional
    kw = dict(sampler="euler", nfe=4, class_labels="random", guidance=2.0, progress=False)
    with torch.no_grad():
        whole = fd.generate(model, list(range(6)), batch=6, **kw)
        split = fd.generate(model, list(range(6)), batch=4, **kw)
        picked = fd.generate(model, [4, 2], batch=1, **kw)
        by_class = fd.generate(model, [4], sampler="euler", nfe=4, class_labels=int(seed_classes([4], 10)[0]),
                               guidance=2.0, progress=False)
        other = fd.generate(model, [4], sampler="euler", nfe=4, class_labels=int(seed_classes([4], 10)[0] + 1) % 10,
                            guidance=2.0, progress=False)
    torch.testing.assert_close(split, whole, atol=1e-5, rtol=0)
    torch.testing.assert_close(picked, whole[[4, 2]], atol=1e-5, rtol=0)
    torch.testing.assert_close(by_class[0], whole[4], atol=1e-5, rtol=0)
    assert (other[0] - whole[4]).abs().max() > 1e-2  # the class matters, so the matches above are the class's


def test_seed_classes_depend_on_the_seed_alone():
    many = seed_classes(range(300), 10)
    assert set(many.tolist()) == set(range(10))
    assert torch.equal(seed_classes([17, 3], 10), many[[17, 3]])
    assert torch.equal(classes_for_seeds("random", [17, 3], 10), many[[17, 3]])
    assert torch.equal(classes_for_seeds(4, [1, 2], 10), torch.tensor([4, 4]))
    assert parse_class("random") == "random" and parse_class("7") == 7 and parse_class(None) is None


def test_psld_models_are_guided_in_eps_with_one_batched_call():
    model = tiny_model("psld", channels=2)
    calls = _record_net_calls(model)
    with torch.no_grad():
        x = fd.sample(model, torch.randn(2, 1, 8, 8), sampler="sscs", nfe=4, class_labels=1, guidance=2.0)
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()
    assert len(calls) == 4 and all(rows == 4 for rows, _ in calls)


def test_distill_trajectories_take_classes_and_store_them(tmp_path, tiny_conditional):
    from fastdiffusion.distill.trajectories import generate_trajectories

    manifest = generate_trajectories(tiny_conditional, tmp_path / "traj", [5, 8, 9], sampler="euler", nfe=8,
                                     times=2, shard_size=2, dtype="fp32", batch=2, class_labels="random",
                                     guidance=2.0, progress=False)
    assert manifest["guidance"] == {"class": "random", "guidance": 2.0, "network_evaluations": 16}
    assert json.loads((tmp_path / "traj" / "manifest.json").read_text())["guidance"] == manifest["guidance"]
    labels, finals = [], []
    for shard in manifest["shards"]:
        with safe_open(str(tmp_path / "traj" / shard["file"]), framework="pt") as f:
            labels.append(f.get_tensor("labels"))
            finals.append(f.get_tensor("x")[:, 0])
    assert torch.equal(torch.cat(labels), seed_classes([5, 8, 9], 10))
    with torch.no_grad():
        direct = fd.generate(tiny_conditional, [5, 8, 9], sampler="euler", nfe=8, class_labels="random",
                             guidance=2.0, progress=False)
    torch.testing.assert_close(torch.cat(finals), direct, atol=1e-5, rtol=0)


def test_labels_that_do_not_fit_the_model_are_one_line_errors(tiny_conditional):
    noise = torch.randn(2, 1, 8, 8)
    unconditional = tiny_model(label_dim=0)
    cases = [
        (dict(model=unconditional, class_labels=1), "unconditional"),
        (dict(model=unconditional, class_labels=1, guidance=2.0), "unconditional"),
        (dict(class_labels=10), "--class 10: this model has 10 classes"),
        (dict(class_labels=torch.tensor([1, -1])), "--class -1"),
        (dict(guidance=2.0), "--guidance needs --class"),
        (dict(class_labels=3, guidance=-1.0), "--guidance must be"),
        (dict(class_labels=3, guidance=float("nan")), "--guidance must be"),
        (dict(class_labels=torch.tensor([1, 2, 3])), "3 rows for a batch of 2"),
        (dict(class_labels=torch.zeros(2, 7)), "7 columns; this model has 10 classes"),
        (dict(model=lambda x, s, y=None: x, class_labels=torch.tensor([1, 2])), "one-hot rows"),
    ]
    for kwargs, needle in cases:
        model = kwargs.pop("model", tiny_conditional)
        with pytest.raises(UserError, match=needle) as err:
            fd.sample(model, noise, sampler="euler", nfe=2, **kwargs)
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="DSNO"):
        guided_model(tiny_conditional, "dsno", 3, None, 2)
    with pytest.raises(UserError, match="'random'"):
        parse_class("three")
    with pytest.raises(UserError, match="4 rows for 2 seeds"):
        classes_for_seeds([1, 2, 3, 4], [0, 1], 10)
