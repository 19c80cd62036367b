"""Metrics: Fréchet distance against closed forms, FD-digits behaviour, PRDC, memorisation, sliced W2, exact-GMM
metrics, FID's offline error paths and code path (stand-in network), and `eval` end to end."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from fastdiffusion.data import GaussianMixture, load_dataset
from fastdiffusion.errors import UserError
from fastdiffusion.metrics import evaluate, fd_digits, frechet_distance, memorization, prdc, sliced_wasserstein
from fastdiffusion.metrics.cli import main as eval_main
from fastdiffusion.metrics.digits_classifier import WEIGHTS_PATH, classifier_info, digits_features
from fastdiffusion.metrics.fid import INCEPTION_ENV, INCEPTION_FILE, fid, load_inception
from fastdiffusion.metrics.frechet import FeatureStats, GaussianStats
from fastdiffusion.metrics.gmm import gmm_metrics
from fastdiffusion.metrics.sliced import wasserstein2_1d_squared


@pytest.fixture(autouse=True)
def one_thread():
    """These tests are small; one intra-op thread avoids oversubscribing a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    return {s: load_dataset("digits32", split=s).x for s in ("train", "test")}


def random_spd(d: int, rng: np.random.Generator, rank: int | None = None) -> np.ndarray:
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / d + (0 if rank else 0.1 * np.eye(d))


# ----------------------------------------------------------------------------------------------- Fréchet


def test_frechet_closed_form_diagonal():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
    a, b = rng.uniform(0.1, 3, 16), rng.uniform(0.1, 3, 16)
    exact = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(exact, rel=1e-12)
    assert frechet_distance(mu1, np.diag(a), mu1, np.diag(a)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("rank", [None, 5])
def test_frechet_matches_sqrtm_reference(rank):
    rng = np.random.default_rng(1)
    for _ in range(3):
        d = 24
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        s1, s2 = random_spd(d, rng, rank), random_spd(d, rng)
        covmean = scipy.linalg.sqrtm(s1 @ s2).real
        ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-7, abs=1e-9)
        # symmetric in its arguments, and torch tensors are accepted
        assert frechet_distance(torch.tensor(mu2), torch.tensor(s2), mu1, s1) == pytest.approx(ref, rel=1e-7)


def test_feature_stats_streaming_merge_and_npz(tmp_path):
    x = torch.randn(1000, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3 + 5
    a = FeatureStats()
    for chunk in x.split(97):
        a.update(chunk.float())
    np.testing.assert_allclose(a.mu, x.mean(0).numpy(), rtol=1e-6)
    np.testing.assert_allclose(a.sigma, np.cov(x.numpy(), rowvar=False), rtol=1e-5, atol=1e-5)
    b = FeatureStats().update(x[:400]).merge(FeatureStats().update(x[400:]))
    np.testing.assert_allclose(b.sigma, np.cov(x.numpy(), rowvar=False), rtol=1e-10)
    path = b.stats(feature_network="test").save(tmp_path / "stats.npz")
    loaded = GaussianStats.load(path)
    assert loaded.n == 1000 and loaded.meta == {"feature_network": "test"}
    np.testing.assert_array_equal(loaded.sigma, b.sigma)
    np.savez(tmp_path / "edm.npz", mu=b.mu, sigma=b.sigma)  # EDM / pytorch-fid style: no n
    assert GaussianStats.load(tmp_path / "edm.npz").frechet_distance(loaded) == pytest.approx(0, abs=1e-9)
    with pytest.raises(UserError, match="not a statistics file"):
        np.savez(tmp_path / "other.npz", images=np.zeros(3))
        GaussianStats.load(tmp_path / "other.npz")


# -------------------------------------------------------------------------------------------- FD on digits


def test_classifier_weights_are_small_and_accurate():
    info = classifier_info()
    assert WEIGHTS_PATH.stat().st_size < 1_000_000
    assert info["test_accuracy"] > 0.97
    x8 = load_dataset("digits", split="test").x[:5]
    assert digits_features(x8).shape == (5, 64)  # 8 px input is resized inside


def blur(x, s):
    r = int(3 * s + 1)
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * s * s))
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))


def shuffle_pixels(x, frac, g):
    n, _, h, w = x.shape
    y = x.reshape(n, -1).clone()
    for i in range(n):
        idx = torch.randperm(h * w, generator=g)[: int(frac * h * w)]
        y[i, idx] = y[i, idx[torch.randperm(len(idx), generator=g)]]
    return y.reshape(x.shape)


def test_fd_digits_zero_on_itself_and_ordered_by_corruption(digits):
    te = digits["test"]
    g = torch.Generator().manual_seed(0)
    assert fd_digits(te, "test") == pytest.approx(0.0, abs=1e-6)
    corruptions = {
        "noise": [(te + s * torch.randn(te.shape, generator=g)).clamp(-1, 1) for s in (0.1, 0.2, 0.4)],
        "blur": [blur(te, s) for s in (1.0, 2.0, 4.0)],
        "shuffle": [shuffle_pixels(te, f, g) for f in (0.1, 0.3, 1.0)],
    }
    for name, sets in corruptions.items():
        fds = [fd_digits(x, "test") for x in sets]
        assert fds[0] > 1.0, (name, fds)
        assert fds[0] < fds[1] < fds[2], (name, fds)


def test_fd_digits_renders_a_named_split_at_the_samples_resolution():
    te16 = load_dataset("digits", resolution=16, split="test").x
    assert fd_digits(te16, "test") == pytest.approx(0.0, abs=1e-6)  # not the 32-px renders, which differ
    assert fd_digits(te16, load_dataset("digits", resolution=32, split="test").x) > 1.0


def test_fd_prdc_and_memorization_separate_good_noisy_and_memorising(digits):
    tr, te = digits["train"], digits["test"]
    g = torch.Generator().manual_seed(1)
    half = (te + 0.3 * torch.randn(te.shape, generator=g)).clamp(-1, 1)  # a half-trained model's noisy digits
    copies = tr[:100].repeat(15, 1, 1, 1)  # 1500 samples, all exact copies of 100 training images
    fd_good, fd_half, fd_copies = (fd_digits(x, "test") for x in (tr, half, copies))
    assert fd_good < 0.5 * fd_half and fd_good < 0.5 * fd_copies, (fd_good, fd_half, fd_copies)

    ref, f_tr, f_te = digits_features(te), digits_features(tr), digits_features(te)
    good, memo = prdc(ref, f_tr), prdc(ref, digits_features(copies))
    assert good["precision"] > 0.85 and good["recall"] > 0.8 and good["coverage"] > 0.9
    assert memo["recall"] < 0.1 and memo["coverage"] < 0.6

    for x, flagged in ((te, False), (half, False), (copies, True)):
        pix = memorization(x, tr, te)
        feat = memorization(digits_features(x), f_tr, f_te)
        assert pix["flagged"] is flagged and feat["flagged"] is flagged, (pix, feat)
    m = memorization(copies, tr, te)
    assert m["fraction_closer"] == 1.0 and m["median_generated_to_train"] == pytest.approx(0, abs=1e-4)
    assert m["median_heldout_to_train"] > 1.0


def test_prdc_on_a_hand_made_example():
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    fake = torch.tensor([[0.5], [10.0]])
    out = prdc(real, fake, k=1)
    # real radii (1-NN): all 1. fake radii: 9.5 each. precision: 0.5 is within 1 of 0 and 1 -> 1/2.
    assert out["precision"] == 0.5
    assert out["recall"] == 1.0  # every real point lies within 9.5 of a fake one
    assert out["density"] == pytest.approx(2 / 2)  # (2 balls hit by fake 0.5 + 0) / (k M)
    assert out["coverage"] == 0.5  # reals 0 and 1 have a fake within radius 1


# ------------------------------------------------------------------------------------------- sliced / GMM


def test_wasserstein_1d_unequal_sizes_exact():
    a = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    b = torch.tensor([[0.0, 0.5, 1.0]], dtype=torch.float64)
    assert float(wasserstein2_1d_squared(a, b)[0]) == pytest.approx(1 / 12)


def test_sliced_wasserstein_of_a_translation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 8, generator=g, dtype=torch.float64)
    m = torch.full((8,), 0.5, dtype=torch.float64)
    # y = x + m: each 1-D W2^2 is (theta . m)^2 exactly; E over the sphere is |m|^2 / D.
    sw = sliced_wasserstein(x, x + m, 4000, torch.Generator().manual_seed(1))
    assert sw == pytest.approx(float(m.norm()) / math.sqrt(8), rel=0.05)
    assert sliced_wasserstein(x, x) == 0.0


def test_gmm_metrics_exact_samples_vs_shifted():
    mix = GaussianMixture.ring2d()
    good = mix.sample(4000, torch.Generator().manual_seed(5))
    out = gmm_metrics(good, mix, n_reference=4000)
    assert abs(out["nll_gap"]) < 4 * math.hypot(out["nll_stderr"], out["data_nll_stderr"])
    assert out["sliced_w2"] < 3 * out["sliced_w2_floor"] + 0.02
    bad = gmm_metrics(good + 0.3, mix, n_reference=4000)  # a shift by m = (0.3, 0.3): SW2 ~ |m| / sqrt(2) = 0.3
    assert bad["nll_gap"] > 1.0 and bad["sliced_w2"] == pytest.approx(0.3, abs=0.06)


# --------------------------------------------------------------------------------------------------- FID


def test_fid_missing_weights_names_the_file(monkeypatch, tmp_path):
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no torch-fidelity cache to fall back on
    with pytest.raises(UserError, match=INCEPTION_FILE) as err:
        load_inception(None)
    assert "torch-fidelity" in str(err.value)
    with pytest.raises(UserError, match=INCEPTION_FILE):
        load_inception(tmp_path)  # a folder without the file
    monkeypatch.setenv(INCEPTION_ENV, str(tmp_path / "nope.pth"))
    with pytest.raises(UserError, match=INCEPTION_FILE):
        load_inception(None)


def test_fid_without_torch_fidelity_names_package_and_file(monkeypatch, tmp_path):
    (tmp_path / INCEPTION_FILE).write_bytes(b"not really weights")
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # makes the import fail
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", None)
    with pytest.raises(UserError, match="torch-fidelity") as err:
        load_inception(tmp_path)
    assert INCEPTION_FILE in str(err.value)


def test_fid_code_path_with_a_stand_in_network(digits, tmp_path):
    """The Inception path minus the network: uint8 round-trip, float64 statistics, stats-file references."""
    proj = torch.randn(3 * 32 * 32, 16, generator=torch.Generator().manual_seed(0))

    def extractor(u8):
        assert u8.dtype == torch.uint8 and u8.shape[1] == 3
        return (u8.float().flatten(1) / 255) @ proj

    info = {"feature_network": "stand-in", "feature_network_sha256": "abc"}
    te, tr = digits["test"], digits["train"]
    same = fid(te, te, extractor=extractor, info=info)
    assert same["value"] == pytest.approx(0, abs=1e-6) and same["n_reference"] == len(te)
    direct = fid(tr, te, extractor=extractor, info=info)
    u8 = lambda x: ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).expand(-1, 3, -1, -1)  # noqa: E731
    fa, fb = extractor(u8(tr)).double(), extractor(u8(te)).double()
    cov = lambda f: np.cov(f.numpy(), rowvar=False)  # noqa: E731
    expect = frechet_distance(fa.mean(0), cov(fa), fb.mean(0), cov(fb))
    assert direct["value"] == pytest.approx(expect, rel=1e-8)
    stats = FeatureStats().update(fb).stats(feature_network_sha256="abc")
    assert fid(tr, stats, extractor=extractor, info=info)["value"] == pytest.approx(expect, rel=1e-8)
    with pytest.raises(UserError, match="feature network"):
        fid(tr, FeatureStats().update(fb).stats(feature_network_sha256="other"), extractor=extractor, info=info)


@pytest.mark.slow
def test_fid_with_torch_fidelity_and_real_weights(digits):
    """Runs only where torch-fidelity and the real weights file ($FASTDIFFUSION_INCEPTION) are present."""
    pytest.importorskip("torch_fidelity")
    if not os.environ.get(INCEPTION_ENV):
        pytest.skip(f"set {INCEPTION_ENV} to {INCEPTION_FILE}")
    out = fid(digits["test"][:8], digits["test"][8:16], batch=8)
    assert out["value"] > 0 and len(out["feature_network_sha256"]) == 64


# --------------------------------------------------------------------------------------------- evaluate / CLI

PROTOCOL_KEYS = {"metric", "feature_network", "feature_network_sha256", "n_generated", "n_reference", "reference",
                 "sampler", "nfe", "weights", "seeds", "source"}


def test_eval_cli_on_an_npz_of_samples(tmp_path, capsys):
    from fastdiffusion.outputs import write_samples

    x = load_dataset("digits", split="train").x[:300]
    write_samples(x, tmp_path / "s.npz", list(range(100, 400)))
    out = tmp_path / "eval.json"
    rc = eval_main([str(tmp_path / "s.npz"), "--metrics", "fd-digits,prdc,memorization,sliced", "--out", str(out),
                    "--quiet"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    for name, res in report["results"].items():
        assert PROTOCOL_KEYS <= set(res["protocol"]), name
        assert res["protocol"]["n_generated"] == 300 and res["protocol"]["seeds"] == "100-399"
    assert report["results"]["fd-digits"]["protocol"]["n_reference"] == 360
    assert report["results"]["memorization"]["flagged"] is True  # these samples are training images
    assert "fd-digits" in capsys.readouterr().out
    assert eval_main([str(tmp_path / "s.npz"), "--metrics", "gmm-nll"]) == 2
    assert "Gaussian-mixture" in capsys.readouterr().err


def test_module_cli_missing_inception_is_one_line_exit_2(tmp_path):
    from fastdiffusion.outputs import write_samples

    write_samples(load_dataset("digits", split="test").x[:8], tmp_path / "s.npz", list(range(8)))
    env = {**{k: v for k, v in os.environ.items() if k != INCEPTION_ENV}, "TORCH_HOME": str(tmp_path / "th")}
    proc = subprocess.run([sys.executable, "-m", "fastdiffusion.metrics.cli", str(tmp_path / "s.npz"),
                           "--metrics", "fid"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and INCEPTION_FILE in lines[0] and lines[0].startswith("fastdiffusion eval: error:")


def test_eval_cli_on_a_tiny_trained_model(tmp_path, capsys):
    from fastdiffusion.training import TrainConfig, train

    run = tmp_path / "run"
    train(TrainConfig(run_dir=str(run), data="digits", net="ddpmpp-tiny", batch=16, steps=3, ckpt_every=3,
                      log_every=1, grid_images=4, grid_nfe=3, lr_warmup=1), quiet=True)
    out = tmp_path / "eval.json"
    rc = eval_main([str(run), "--n", "24", "--sampler", "euler", "--nfe", "2", "--seeds", "10-33", "--raw",
                    "--metrics", "fd-digits,prdc,memorization,sliced", "--batch", "8", "--out", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    for res in report["results"].values():
        p = res["protocol"]
        assert PROTOCOL_KEYS <= set(p)
        assert (p["sampler"], p["nfe"], p["weights"], p["seeds"], p["n_generated"]) == ("euler", 2, "raw", "10-33", 24)
        assert p["model_file"].endswith("model.safetensors") and len(p["model_sha256"]) == 64
    fd = report["results"]["fd-digits"]
    assert fd["value"] > 0 and fd["protocol"]["reference"] == "digits@test"  # the test split at the samples' 8 px
    assert len(fd["protocol"]["feature_network_sha256"]) == 64
    assert report["results"]["sliced"]["protocol"]["reference"] == "digits@test"  # the run's data, 8 px


def test_evaluate_points_with_an_exact_mixture():
    mix = GaussianMixture.ring2d()
    x = mix.sample(2000, torch.Generator().manual_seed(3), dtype=torch.float32)
    report = evaluate(x, reference="gmm", device="cpu")
    assert set(report["results"]) == {"sliced", "gmm-nll"}
    g = report["results"]["gmm-nll"]
    assert abs(g["nll_gap"]) < 0.1 and g["protocol"]["reference"] == "gmm (fresh draws)"
    assert report["results"]["sliced"]["value"] < 3 * report["results"]["sliced"]["floor"] + 0.02
    with pytest.raises(UserError, match="needs images"):
        evaluate(x, metrics="fd-digits", reference="gmm")


_TWO_RANK_SCRIPT = """
import json, sys
import torch
import torch.distributed as dist
from fastdiffusion.data import load_dataset
from fastdiffusion.metrics import evaluate
from fastdiffusion.metrics.fid import image_stats
from fastdiffusion.training.distributed import rank_world

torch.set_num_threads(1)
report = evaluate(sys.argv[1], metrics="fd-digits,memorization", n=10, sampler="euler", nfe=2, batch=3,
                  device="cpu")
proj = torch.randn(3 * 32 * 32, 5, generator=torch.Generator().manual_seed(0))
x = load_dataset("digits32", split="test").x[:7]
stats = image_stats(x, lambda u8: (u8.float().flatten(1) / 255) @ proj, batch=2)
if dist.get_rank() == 0:
    out = {"fd": report["results"]["fd-digits"]["value"], "world": report["environment"]["world_size"],
           "rank_world": rank_world(), "n": stats.n, "mu": stats.mu.tolist(), "sigma": stats.sigma.tolist()}
    open(sys.argv[2], "w").write(json.dumps(out))
dist.destroy_process_group()
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rank_world_outside_torchrun_is_rank_0_of_1():
    from fastdiffusion.training.distributed import rank_world

    assert rank_world() == (0, 1)


def test_two_rank_gloo_evaluate_and_sharded_stats_match_one_process(tmp_path):
    """Generation is sharded by generate(); feature statistics are sharded by rows and all-reduced."""
    from fastdiffusion.metrics.fid import image_stats
    from fastdiffusion.training import TrainConfig, train

    run = tmp_path / "run"
    train(TrainConfig(run_dir=str(run), data="digits", net="ddpmpp-tiny", batch=16, steps=2, ckpt_every=2,
                      log_every=1, grid_images=4, grid_nfe=3, lr_warmup=1), quiet=True)
    script, out = tmp_path / "two_rank.py", tmp_path / "two.json"
    script.write_text(_TWO_RANK_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
           str(_free_port()), str(script), str(run), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(out.read_text())
    one = evaluate(str(run), metrics="fd-digits", n=10, sampler="euler", nfe=2, batch=4, device="cpu")
    assert two["world"] == 2 and two["rank_world"] == [0, 2]
    assert two["fd"] == pytest.approx(one["results"]["fd-digits"]["value"], rel=1e-4)
    proj = torch.randn(3 * 32 * 32, 5, generator=torch.Generator().manual_seed(0))
    ref = image_stats(load_dataset("digits32", split="test").x[:7], lambda u8: (u8.float().flatten(1) / 255) @ proj)
    assert two["n"] == 7
    np.testing.assert_allclose(two["mu"], ref.mu, rtol=1e-6)
    np.testing.assert_allclose(two["sigma"], ref.sigma, rtol=1e-5, atol=1e-8)


def test_evaluate_fid_wiring_folder_reference_and_stats_file(tmp_path, monkeypatch):
    """fid through evaluate with a stand-in network: a folder reference, saving its statistics, reusing them."""
    import fastdiffusion.metrics.fid as fid_module
    from fastdiffusion.outputs import write_samples

    proj = torch.randn(3 * 16 * 16, 6, generator=torch.Generator().manual_seed(0))
    stand_in = (lambda u8: (u8.float().flatten(1) / 255) @ proj.to(u8.device),
                {"feature_network": "stand-in", "feature_network_sha256": "f" * 64})
    monkeypatch.setattr(fid_module, "load_inception", lambda path=None, device="cpu": stand_in)
    ref_dir = tmp_path / "ref"
    write_samples(load_dataset("digits16", split="test").x, ref_dir, list(range(360)))  # a folder of PNGs
    samples = load_dataset("digits16", split="train").x[:200]
    stats = tmp_path / "ref_stats.npz"
    a = evaluate(samples, metrics="fid,sliced,memorization", reference=str(ref_dir), save_reference_stats=stats)
    p = a["results"]["fid"]["protocol"]
    assert p["reference"] == f"{ref_dir}@all" and p["n_reference"] == 360 and p["feature_network"] == "stand-in"
    assert a["results"]["memorization"]["flagged"] is False  # train images vs a folder's own train/test split
    b = evaluate(samples, metrics="fid", reference=str(stats))
    assert b["results"]["fid"]["value"] == pytest.approx(a["results"]["fid"]["value"], rel=1e-9)
    assert b["results"]["fid"]["protocol"]["reference"] == str(stats)
    with pytest.raises(UserError, match="statistics file"):
        evaluate(samples, metrics="fid,sliced", reference=str(stats))


# ------------------------------------------------------------------------------------------------------ KID


def _mmd2_brute_force(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD² of Bińkowski et al. with k(a, b) = (aᵀb / d + 1)³, summed pair by pair in float64."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    d, m, n = x.shape[1], len(x), len(y)
    k = lambda a, b: (float(a @ b) / d + 1.0) ** 3  # noqa: E731
    within_x = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    within_y = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    cross = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return within_x + within_y - 2 * cross


def test_mmd2_unbiased_matches_a_float64_brute_force():
    from fastdiffusion.metrics.kid import mmd2_unbiased

    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 5)).astype(np.float32)
    y = (rng.standard_normal((9, 5)) * 1.3 + 0.4).astype(np.float32)
    expect = _mmd2_brute_force(x, y)
    assert expect > 0.05
    assert mmd2_unbiased(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(expect, rel=1e-12)


def test_kid_averages_the_brute_force_over_its_documented_subsets():
    from fastdiffusion.metrics.kid import kid

    rng = np.random.default_rng(1)
    f, r = rng.standard_normal((12, 4)), rng.standard_normal((10, 4)) + 0.3
    out = kid(torch.from_numpy(f), torch.from_numpy(r), subsets=5, subset_size=6, seed=3)
    g = torch.Generator().manual_seed(3)
    values = []
    for _ in range(5):  # pair s: randperm(N_gen)[:m], then randperm(N_ref)[:m], from one generator
        i, j = torch.randperm(12, generator=g)[:6].numpy(), torch.randperm(10, generator=g)[:6].numpy()
        values.append(_mmd2_brute_force(f[i], r[j]))
    assert out["value"] == pytest.approx(np.mean(values), rel=1e-12)
    assert out["std"] == pytest.approx(np.std(values), rel=1e-9) and out["std"] > 0
    assert (out["subsets"], out["subset_size"]) == (5, 6)
    whole = kid(torch.from_numpy(f[:10]), torch.from_numpy(r), subset_size=1000)  # every subset is the whole set
    assert whole["subset_size"] == 10 and whole["std"] < 1e-12
    assert whole["value"] == pytest.approx(_mmd2_brute_force(f[:10], r), rel=1e-10)


def test_kid_digits_in_evaluate_uses_the_classifier_features_and_orders_quality(digits):
    from fastdiffusion.metrics.kid import kid

    tr16 = load_dataset("digits16", split="train").x[:300]
    noisy = (tr16 + 0.6 * torch.randn(tr16.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    good = evaluate(tr16, metrics="kid-digits", reference="digits16@test")["results"]["kid-digits"]
    bad = evaluate(noisy, metrics="kid-digits", reference="digits16@test")["results"]["kid-digits"]
    p = good["protocol"]
    assert (p["reference"], p["n_reference"], p["subset_size"], p["subsets"]) == ("digits16@test", 360, 300, 100)
    direct = kid(digits_features(tr16), digits_features(load_dataset("digits16", split="test").x), subset_size=1000)
    assert good["value"] == pytest.approx(direct["value"], rel=1e-9)
    assert abs(good["value"]) < 0.1 * bad["value"] and bad["value"] > 0


def test_kid_and_fid_share_one_feature_extraction(tmp_path, monkeypatch):
    import fastdiffusion.metrics.fid as fid_module
    from fastdiffusion.metrics.kid import kid

    proj = torch.randn(3 * 16 * 16, 6, generator=torch.Generator().manual_seed(0))
    rows = []

    def extractor(u8):
        rows.append(len(u8))
        return (u8.float().flatten(1) / 255) @ proj.to(u8.device)

    info = {"feature_network": "stand-in", "feature_network_sha256": "f" * 64}
    monkeypatch.setattr(fid_module, "load_inception", lambda path=None, device="cpu": (extractor, info))
    samples = load_dataset("digits16", split="train").x[:50]
    reference = load_dataset("digits16", split="test").x
    out = evaluate(samples, metrics="fid,kid", reference="digits16@test", batch=32)["results"]
    assert sum(rows) == 50 + 360  # samples and reference each went through the network once
    u8 = lambda x: ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).expand(-1, 3, -1, -1)  # noqa: E731
    fs, fr = extractor(u8(samples)), extractor(u8(reference))
    assert out["kid"]["value"] == pytest.approx(kid(fs, fr)["value"], rel=1e-9)
    assert out["kid"]["protocol"]["feature_network"] == "stand-in" and out["kid"]["protocol"]["subset_size"] == 50
    cov = lambda f: np.cov(f.double().numpy(), rowvar=False)  # noqa: E731
    expect = frechet_distance(fs.double().mean(0), cov(fs), fr.double().mean(0), cov(fr))
    assert out["fid"]["value"] == pytest.approx(expect, rel=1e-8)


def test_inception_weights_are_found_in_torch_fidelitys_cache(tmp_path, monkeypatch):
    from fastdiffusion.metrics.fid import resolve_inception

    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / INCEPTION_FILE  # where torch.hub.load_state_dict_from_url keeps it
    with pytest.raises(UserError, match=str(cached.parent)):
        resolve_inception(None)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights")
    assert resolve_inception(None) == cached
    other = tmp_path / "mine.pth"
    other.write_bytes(b"w")
    assert resolve_inception(other) == other  # a given path still comes first


# ------------------------------------------------------------------------ references: names and training overlap


def test_eval_uses_and_names_the_reference_it_was_given():
    te16, tr16 = (load_dataset("digits16", split=s).x for s in ("test", "train"))
    same = evaluate(te16, metrics="fd-digits,prdc", reference="digits16@test")["results"]
    assert same["fd-digits"]["protocol"]["reference"] == "digits16@test"
    assert same["fd-digits"]["value"] == pytest.approx(0.0, abs=1e-6)  # the samples are the reference images
    assert same["prdc"]["protocol"]["reference"] == "digits16@test"
    train = evaluate(te16, metrics="fd-digits", reference="digits16@train")["results"]["fd-digits"]
    assert (train["protocol"]["reference"], train["protocol"]["n_reference"]) == ("digits16@train", 1437)
    assert train["value"] == pytest.approx(fd_digits(te16, tr16), rel=1e-9)
    up = evaluate(load_dataset("digits32", split="test").x, metrics="fd-digits", reference="digits16@train")
    assert up["results"]["fd-digits"]["protocol"]["reference"] == "digits32@train"  # matched to 32-px samples


def test_eval_warns_when_the_reference_overlaps_the_training_split(tmp_path, capsys):
    import shutil

    from fastdiffusion.checkpoint import list_checkpoints
    from fastdiffusion.training import TrainConfig, train

    run = tmp_path / "run"
    train(TrainConfig(run_dir=str(run), data="digits", data_split="train", net="ddpmpp-tiny", batch=16, steps=1,
                      ckpt_every=1, grid_images=1, grid_nfe=1, lr_warmup=1), quiet=True)
    out = tmp_path / "eval.json"
    args = ["--n", "8", "--sampler", "euler", "--nfe", "1", "--batch", "8", "--metrics", "fd-digits,memorization",
            "--out", str(out), "--quiet"]

    def warnings(model, *extra):
        assert eval_main([str(model), *args, *extra]) == 0
        report = json.loads(out.read_text())
        assert capsys.readouterr().err.count("fastdiffusion eval: warning: ") == len(report["warnings"])
        return report

    held_out = warnings(run)  # the default reference is the test split this run held out
    assert held_out["warnings"] == [] and held_out["protocol"]["training_data"] == "digits@train"
    own = warnings(run, "--reference", "train")
    assert own["warnings"] == ["the reference digits@train of fd-digits overlaps the model's training data "
                               "(digits@train): these numbers measure fit to training images; evaluate on a split it "
                               "did not train on (train with --data-split train, evaluate with --reference test)"]
    alone = tmp_path / "alone" / "model.safetensors"
    alone.parent.mkdir()
    shutil.copy(list_checkpoints(run)[0] / "ema.safetensors", alone)
    assert warnings(alone)["warnings"] == [f"cannot check whether the reference overlaps the model's training data: "
                                           f"{alone} has no run config.json recording its data and split"]
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "data_split": "all"}))  # as the demo used to train
    everything = warnings(run)["warnings"]
    assert len(everything) == 2 and "digits@test of fd-digits overlaps" in everything[0]
    assert everything[1].startswith("memorization's held-out set digits@test is in the model's training data")


def test_class_accuracy_scores_samples_against_the_classes_they_were_generated_for():
    from sklearn.datasets import load_digits
    from test_guidance import tiny_model

    import fastdiffusion as fd
    from fastdiffusion.guidance import seed_classes
    from fastdiffusion.metrics.digits_classifier import classify_features

    every = load_dataset("digits32", split="all").x  # the bundled order is sklearn's
    truth = torch.from_numpy(load_digits().target)
    assert (classify_features(digits_features(every)) == truth).double().mean() > 0.99
    model = tiny_model()
    report = evaluate(model, n=12, sampler="euler", nfe=2, class_labels="random", guidance=2.0, device="cpu")
    assert set(report["results"]) == {"fd-digits", "kid-digits", "class-accuracy", "prdc", "memorization"}
    with torch.no_grad():
        x = fd.generate(model, list(range(12)), sampler="euler", nfe=2, class_labels="random", guidance=2.0,
                        progress=False)
    expect = (classify_features(digits_features(x)) == seed_classes(range(12), 10)).double().mean()
    assert report["results"]["class-accuracy"]["value"] == pytest.approx(float(expect), abs=1e-12)
    with pytest.raises(UserError, match="class-accuracy needs"):
        evaluate(every[:8], metrics="class-accuracy")
