"""Tests for fastdiffusion.data: bundled sets, file readers, bad-input errors, exact GMM math, toys."""

from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastdiffusion.data import (
    BUNDLED,
    Dataset,
    GaussianMixture,
    load_dataset,
    load_digits,
    load_folder,
    load_npz,
    load_zip,
    random_hflip,
    split_indices,
    toys,
)
from fastdiffusion.errors import UserError

# ----------------------------------------------------------------------------------- helpers


def _rng_images(n: int, c: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, c, h, w), dtype=np.uint8)


def _save(arr: np.ndarray, path: Path, mode: str | None = None) -> None:
    """Save one uint8 (C, H, W) image with PIL."""
    path.parent.mkdir(parents=True, exist_ok=True)
    hwc = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
    img = Image.fromarray(np.ascontiguousarray(hwc))
    if mode is not None:
        img = img.convert(mode)
    img.save(path)


def _write_folder(root: Path, images: np.ndarray, ext: str = "png") -> list[Path]:
    # Names chosen so that sorted relative paths give the array order, with one nested folder.
    paths = [root / ("a" if i < 2 else "b") / f"img_{i:03d}.{ext}" for i in range(len(images))]
    for arr, p in zip(images, paths, strict=True):
        _save(arr, p)
    return paths


def _expect_user_error(match_names: list[str], fn, *args, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, msg
    for name in match_names:
        assert name in msg, (name, msg)
    return msg


# ------------------------------------------------------------------------------------ digits


@pytest.mark.parametrize("res", [8, 16, 32])
def test_digits_shapes_and_range(res: int) -> None:
    x = load_digits(res)
    assert x.shape == (1797, 1, res, res) and x.dtype == np.uint8
    assert x.min() == 0 and x.max() == 255


def test_digits_values_are_scaled_sklearn_pixels() -> None:
    from sklearn.datasets import load_digits as sk

    expected = np.rint(sk().images * 255.0 / 16.0).astype(np.uint8)[:, None]
    np.testing.assert_array_equal(load_digits(8), expected)


def test_digits_split_is_disjoint_stratified_and_fixed() -> None:
    from sklearn.datasets import load_digits as sk

    labels = sk().target
    tr, te = split_indices(len(labels), "train", labels), split_indices(len(labels), "test", labels)
    assert len(tr) == 1437 and len(te) == 360
    assert set(tr).isdisjoint(te) and set(tr) | set(te) == set(range(len(labels)))
    np.testing.assert_array_equal(tr, split_indices(len(labels), "train", labels))  # deterministic
    counts = np.bincount(labels[te], minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38  # stratified: ~36 per class
    all_ = load_digits(16, "all")
    np.testing.assert_array_equal(load_digits(16, "train"), all_[tr])
    np.testing.assert_array_equal(load_digits(16, "test"), all_[te])


def test_load_dataset_digits_specs() -> None:
    ds = load_dataset("digits")
    assert isinstance(ds, Dataset) and ds.kind == "image" and ds.shape == (1, 8, 8) and len(ds) == 1797
    assert ds.x.dtype == torch.float32 and ds.x.min() == -1.0 and ds.x.max() == 1.0 and ds.gmm is None
    assert load_dataset("digits16", split="test").x.shape == (360, 1, 16, 16)
    assert load_dataset("digits32", split="train").shape == (1, 32, 32)
    assert load_dataset("digits", resolution=16).shape == (1, 16, 16)
    _expect_user_error(["digits16"], load_dataset, "digits16", resolution=32)
    _expect_user_error(["split", "valid"], load_dataset, "digits", split="valid")


# -------------------------------------------------------------------------- file round trips


def test_folder_round_trip_gray_rectangular(tmp_path: Path) -> None:
    images = _rng_images(5, 1, 6, 10)
    _write_folder(tmp_path / "ds", images)
    (tmp_path / "ds" / "notes.txt").write_text("ignored")
    np.testing.assert_array_equal(load_folder(tmp_path / "ds"), images)
    ds = load_dataset(str(tmp_path / "ds"))
    assert ds.kind == "image" and ds.shape == (1, 6, 10)
    torch.testing.assert_close(ds.x, torch.from_numpy(images).float() / 127.5 - 1)


def test_folder_rgb_rgba_and_formats(tmp_path: Path) -> None:
    images = _rng_images(4, 3, 8, 8)
    root = tmp_path / "rgb"
    _save(images[0], root / "0.png")
    _save(images[1], root / "1.bmp")
    _save(images[2], root / "2.PNG", mode="RGBA")  # alpha is dropped
    Image.fromarray(images[3].transpose(1, 2, 0)).save(root / "3.webp", lossless=True)
    np.testing.assert_array_equal(load_folder(root), images)
    _save(images[0], tmp_path / "jpg" / "a.jpg")
    _save(images[1], tmp_path / "jpg" / "b.jpeg")
    x = load_folder(tmp_path / "jpg")
    assert x.shape == (2, 3, 8, 8) and x.dtype == np.uint8  # lossy: shape only


def test_zip_round_trip(tmp_path: Path) -> None:
    images = _rng_images(3, 3, 5, 7)
    paths = _write_folder(tmp_path / "src", images)
    archive = tmp_path / "ds.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in paths:
            zf.write(p, p.relative_to(tmp_path / "src").as_posix())
        zf.writestr("__MACOSX/a/._img_000.png", b"junk")  # skipped
        zf.writestr("readme.md", "ignored")
    np.testing.assert_array_equal(load_zip(archive), images)
    assert load_dataset(str(archive)).shape == (3, 5, 7)


def test_npz_layouts_and_value_ranges(tmp_path: Path) -> None:
    u8 = _rng_images(4, 3, 6, 6)
    cases = {
        "nchw.npz": u8,
        "nhwc.npz": u8.transpose(0, 2, 3, 1),
        "unit.npz": u8.astype(np.float32) / 255.0,
        "signed.npz": u8.astype(np.float64) / 127.5 - 1.0,
        "int64.npz": u8.astype(np.int64),
    }
    for name, arr in cases.items():
        np.savez(tmp_path / name, images=arr)
        np.testing.assert_array_equal(load_npz(tmp_path / name), u8, err_msg=name)
    gray = u8[:, 0]
    np.savez(tmp_path / "nhw.npz", gray)  # arr_0
    np.testing.assert_array_equal(load_npz(tmp_path / "nhw.npz"), gray[:, None])
    np.savez(tmp_path / "multi.npz", a=u8, b=gray)
    np.testing.assert_array_equal(load_npz(tmp_path / "multi.npz", key="b"), gray[:, None])
    ds = load_dataset(f"{tmp_path / 'multi.npz'}:b", resolution=12, split="train")
    assert ds.x.shape == (3, 1, 12, 12) and ds.name.endswith("multi.npz:b")
    np.save(tmp_path / "plain.npy", u8)
    np.testing.assert_array_equal(
        load_dataset(str(tmp_path / "plain.npy")).x, torch.from_numpy(u8) / 127.5 - 1
    )


def test_file_splits_partition(tmp_path: Path) -> None:
    u8 = _rng_images(10, 1, 4, 4)
    np.savez(tmp_path / "d.npz", u8)
    tr, te = (load_dataset(str(tmp_path / "d.npz"), split=s).x for s in ("train", "test"))
    assert len(tr) == 8 and len(te) == 2
    rows = lambda t: {tuple(r.flatten().tolist()) for r in t}  # noqa: E731
    assert rows(tr).isdisjoint(rows(te)) and len(rows(tr) | rows(te)) == 10


# -------------------------------------------------------------------------------- bad inputs


def test_missing_path_and_unknown_spec(tmp_path: Path) -> None:
    _expect_user_error(["nope_dir"], load_folder, tmp_path / "nope_dir")
    _expect_user_error(["nope.zip"], load_zip, tmp_path / "nope.zip")
    _expect_user_error(["nope.npz"], load_npz, tmp_path / "nope.npz")
    msg = _expect_user_error(["imagenet9"], load_dataset, "imagenet9")
    for name in BUNDLED:
        assert name in msg
    (tmp_path / "data.csv").write_text("1,2")
    _expect_user_error(["data.csv"], load_dataset, str(tmp_path / "data.csv"))


def test_empty_folder_and_zip(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    _expect_user_error(["empty", "no images"], load_folder, tmp_path / "empty")
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as zf:
        zf.writestr("readme.txt", "no images here")
    _expect_user_error(["empty.zip", "no images"], load_zip, tmp_path / "empty.zip")
    (tmp_path / "broken.zip").write_bytes(b"not a zip at all")
    _expect_user_error(["broken.zip"], load_zip, tmp_path / "broken.zip")


def test_mixed_sizes_and_channels(tmp_path: Path) -> None:
    _save(_rng_images(1, 1, 8, 8)[0], tmp_path / "size" / "a.png")
    _save(_rng_images(1, 1, 8, 9)[0], tmp_path / "size" / "b_odd.png")
    _expect_user_error(["b_odd.png", "9x8", "8x8", "a.png"], load_folder, tmp_path / "size")

    _save(_rng_images(1, 1, 8, 8)[0], tmp_path / "chan" / "a.png")
    _save(_rng_images(1, 3, 8, 8)[0], tmp_path / "chan" / "b_rgb.png")
    _expect_user_error(["b_rgb.png", "RGB", "grayscale"], load_folder, tmp_path / "chan")

    with zipfile.ZipFile(tmp_path / "mixed.zip", "w") as zf:
        zf.write(tmp_path / "size" / "a.png", "x/a.png")
        zf.write(tmp_path / "size" / "b_odd.png", "x/b_odd.png")
    _expect_user_error(["mixed.zip:x/b_odd.png", "9x8"], load_zip, tmp_path / "mixed.zip")


def test_corrupt_image(tmp_path: Path) -> None:
    _save(_rng_images(1, 3, 8, 8)[0], tmp_path / "c" / "good.png")
    (tmp_path / "c" / "zz_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    _expect_user_error(["zz_bad.png", "cannot read"], load_folder, tmp_path / "c")
    good = (tmp_path / "c" / "good.png").read_bytes()
    (tmp_path / "c" / "zz_bad.png").write_bytes(good[: len(good) // 2])  # truncated
    _expect_user_error(["zz_bad.png"], load_folder, tmp_path / "c")
    with zipfile.ZipFile(tmp_path / "c.zip", "w") as zf:
        zf.writestr("good.png", good)
        zf.writestr("trunc.png", good[:40])
    _expect_user_error(["c.zip:trunc.png"], load_zip, tmp_path / "c.zip")


def test_bad_npz(tmp_path: Path) -> None:
    np.savez(tmp_path / "flat.npz", np.zeros((4, 16), np.uint8))
    _expect_user_error(["flat.npz", "(4, 16)"], load_npz, tmp_path / "flat.npz")
    np.savez(tmp_path / "five.npz", np.zeros((2, 1, 4, 4, 1), np.uint8))
    _expect_user_error(["five.npz"], load_npz, tmp_path / "five.npz")
    np.savez(tmp_path / "rgba.npz", np.zeros((2, 4, 4, 4), np.uint8))
    _expect_user_error(["rgba.npz", "C = 1 or 3"], load_npz, tmp_path / "rgba.npz")
    np.savez(tmp_path / "range.npz", np.full((2, 4, 4), 3.0))
    _expect_user_error(["range.npz", "[0, 1] or [-1, 1]"], load_npz, tmp_path / "range.npz")
    np.savez(tmp_path / "nan.npz", np.full((2, 4, 4), np.nan))
    _expect_user_error(["nan.npz"], load_npz, tmp_path / "nan.npz")
    np.savez(tmp_path / "ints.npz", np.full((2, 4, 4), 300))
    _expect_user_error(["ints.npz", "300"], load_npz, tmp_path / "ints.npz")
    np.savez(tmp_path / "bools.npz", np.ones((2, 4, 4), bool))
    _expect_user_error(["bools.npz", "bool"], load_npz, tmp_path / "bools.npz")
    np.savez(tmp_path / "empty.npz", np.zeros((0, 4, 4), np.uint8))
    _expect_user_error(["empty.npz"], load_npz, tmp_path / "empty.npz")
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 4, 4)), b=np.zeros((2, 4, 4)))
    _expect_user_error(["two.npz", "'a'", "'b'"], load_npz, tmp_path / "two.npz")
    _expect_user_error(["two.npz", "'c'"], load_npz, tmp_path / "two.npz", key="c")
    (tmp_path / "junk.npz").write_bytes(b"garbage")
    _expect_user_error(["junk.npz"], load_npz, tmp_path / "junk.npz")


def test_resolution_rules(tmp_path: Path) -> None:
    np.savez(tmp_path / "rect.npz", _rng_images(2, 1, 4, 6))
    _expect_user_error(["rect.npz", "square"], load_dataset, str(tmp_path / "rect.npz"), resolution=8)
    _expect_user_error(["moons", "resolution"], load_dataset, "moons", resolution=8)


# ------------------------------------------------------------------------------ augmentation


def test_random_hflip() -> None:
    x = torch.randn(64, 3, 4, 5)
    y = random_hflip(x, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(a, b.flip(-1)) for a, b in zip(x, y, strict=True)])
    kept = torch.tensor([torch.equal(a, b) for a, b in zip(x, y, strict=True)])
    assert bool((flipped ^ kept).all()) and 10 < int(flipped.sum()) < 54
    torch.testing.assert_close(y, random_hflip(x, torch.Generator().manual_seed(0)), rtol=0, atol=0)
    _expect_user_error(["(8, 2)"], random_hflip, torch.zeros(8, 2), torch.Generator())


# ----------------------------------------------------------------------------- GMM exactness


def _mix1d() -> GaussianMixture:
    return GaussianMixture(
        means=torch.tensor([[-2.0], [0.5], [3.0]]),
        variances=torch.tensor([[0.3**2], [0.05**2], [1.1**2]]),
        weights=torch.tensor([0.2, 0.5, 0.3]),
    )


def _prior_density(mix: GaussianMixture, grid: torch.Tensor) -> torch.Tensor:
    """p(x0) on a (G, D) grid from the definition Σ_k w_k Π_d N(x0_d; μ_kd, v_kd)."""
    d = grid[:, None, :] - mix.means[None]
    comp = torch.exp(-0.5 * d**2 / mix.variances) / torch.sqrt(2 * math.pi * mix.variances)
    return (mix.weights * comp.prod(dim=2)).sum(dim=1)


@pytest.mark.parametrize("sigma", [0.01, 0.2, 1.0, 5.0])
def test_denoise_matches_quadrature_1d(sigma: float) -> None:
    """E[x0 | x] = ∫ x0 p(x0) N(x; x0, σ²) dx0 / ∫ p(x0) N(x; x0, σ²) dx0 by float64 trapezoid quadrature."""
    mix = _mix1d()
    grid = torch.linspace(-30.0, 30.0, 600_001, dtype=torch.float64)
    prior = _prior_density(mix, grid[:, None])
    xs = torch.tensor([-4.0, -2.0, -0.3, 0.5, 0.7, 2.0, 6.0], dtype=torch.float64)
    lik = torch.exp(-0.5 * (xs[:, None] - grid[None]) ** 2 / sigma**2) / math.sqrt(2 * math.pi * sigma**2)
    evidence = torch.trapezoid(prior * lik, grid, dim=1)
    expected = torch.trapezoid(grid * prior * lik, grid, dim=1) / evidence
    got = mix.denoise(xs[:, None], sigma)[:, 0]
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(mix.log_prob(xs[:, None], sigma), evidence.log(), rtol=1e-9, atol=1e-9)


def test_denoise_matches_quadrature_2d_anisotropic() -> None:
    """Per-dimension variances matter: brute-force 2-D quadrature with different v_k per axis."""
    mix = GaussianMixture(
        means=torch.tensor([[-1.0, 0.5], [1.5, -1.0]]),
        variances=torch.tensor([[0.2**2, 0.8**2], [0.6**2, 0.15**2]]),
        weights=torch.tensor([0.35, 0.65]),
    )
    sigma = 0.4
    axis = torch.linspace(-6.0, 6.0, 1201, dtype=torch.float64)
    gx, gy = torch.meshgrid(axis, axis, indexing="ij")
    grid = torch.stack([gx.flatten(), gy.flatten()], dim=1)
    prior = _prior_density(mix, grid)
    xs = torch.tensor([[0.0, 0.0], [-1.2, 1.0], [2.0, -0.5], [0.3, 1.7]], dtype=torch.float64)
    lik = torch.exp(-0.5 * ((xs[:, None, :] - grid[None]) ** 2).sum(-1) / sigma**2)
    wts = (
        prior * lik
    )  # constant factors cancel in the ratio; uniform grid → Riemann sum is spectrally accurate
    expected = (wts[:, :, None] * grid[None]).sum(1) / wts.sum(1, keepdim=True)
    torch.testing.assert_close(mix.denoise(xs, sigma), expected, rtol=1e-8, atol=1e-8)


def test_score_is_grad_log_prob_and_denoise_identity() -> None:
    mix = GaussianMixture.random(5, 7, seed=3, spread=1.5, component_std=0.4)
    x = (
        2.0 * torch.randn(32, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ).requires_grad_()
    sigma = torch.logspace(-2, 1, 32, dtype=torch.float64)
    (grad,) = torch.autograd.grad(mix.log_prob(x, sigma).sum(), x)
    score = mix.score(x.detach(), sigma)
    torch.testing.assert_close(score, grad, rtol=1e-10, atol=1e-10)
    expected = x.detach() + sigma[:, None] ** 2 * score
    torch.testing.assert_close(mix.denoise(x.detach(), sigma), expected, rtol=1e-12, atol=1e-12)


def test_denoise_batching_dtype_and_shapes() -> None:
    mix = GaussianMixture.benchmark64()
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.0, 0.01, 0.1, 1.0, 10.0, 80.0])
    d = mix.denoise(x, sigma.view(-1, 1, 1, 1))
    assert d.shape == x.shape and d.dtype == torch.float32
    rows = torch.cat([mix.denoise(x[i : i + 1], float(sigma[i])) for i in range(6)])
    torch.testing.assert_close(d, rows, rtol=0, atol=0)
    torch.testing.assert_close(d[0], x[0], rtol=0, atol=0)  # σ = 0: D(x) = x
    # σ → ∞: D → prior mean; far-away x: still finite (logsumexp-stable responsibilities)
    torch.testing.assert_close(mix.denoise(x[:1], 1e6).flatten().double(), mix.mean(), rtol=0, atol=1e-5)
    assert (
        torch.isfinite(mix.denoise(1e4 * x, 0.01)).all() and torch.isfinite(mix.log_prob(1e4 * x, 0.01)).all()
    )
    with pytest.raises(UserError):
        mix.denoise(torch.zeros(3, 10), 1.0)
    with pytest.raises(UserError):
        mix.denoise(torch.zeros(3, 64), torch.ones(2))


def test_log_prob_normalised_and_samples_match_moments() -> None:
    mix = _mix1d()
    grid = torch.linspace(-40, 40, 200_001, dtype=torch.float64)[:, None]
    for sigma in (0.0, 0.7):
        assert abs(torch.trapezoid(mix.log_prob(grid, sigma).exp(), grid[:, 0]).item() - 1.0) < 1e-9
    mix = GaussianMixture.random(3, 4, seed=0)
    x = mix.sample(200_000, torch.Generator().manual_seed(0))
    assert x.shape == (200_000, 3) and x.dtype == torch.float64
    torch.testing.assert_close(x.mean(0), mix.mean(), rtol=0, atol=0.02)
    torch.testing.assert_close(x.var(0), mix.variance(), rtol=0.03, atol=0)


def test_gmm_factories_and_validation() -> None:
    a, b = GaussianMixture.random(4, 3, seed=5), GaussianMixture.random(4, 3, seed=5)
    assert torch.equal(a.means, b.means) and torch.equal(a.variances, b.variances)
    assert a.means.dtype == torch.float64 and abs(a.weights.sum().item() - 1) < 1e-12
    ring = GaussianMixture.ring2d()
    assert ring.n_components == 8 and ring.dim == 2
    torch.testing.assert_close(ring.variance(), torch.ones(2, dtype=torch.float64))
    bench = GaussianMixture.benchmark64()
    assert bench.dim == 64 and torch.equal(bench.means, GaussianMixture.benchmark64().means)
    with pytest.raises(UserError):
        GaussianMixture(torch.zeros(2, 3), torch.ones(2, 2), torch.ones(2))
    with pytest.raises(UserError):
        GaussianMixture(torch.zeros(2, 3), -torch.ones(2, 3), torch.ones(2))
    with pytest.raises(UserError):
        GaussianMixture(torch.zeros(2, 3), torch.ones(2, 3), torch.tensor([1.0, 0.0]))


def test_gmm_datasets_carry_their_mixture() -> None:
    ds = load_dataset("gmm64", n_points=500)
    assert ds.kind == "points" and ds.shape == (64,) and ds.x.dtype == torch.float32
    assert ds.gmm is not None and ds.gmm.dim == 64
    ds2 = load_dataset("gmm", n_points=300)
    assert ds2.shape == (2,) and ds2.gmm is not None and ds2.gmm.n_components == 8
    test = load_dataset("gmm", n_points=300, split="test")
    assert not torch.equal(ds2.x, test.x)
    assert torch.equal(ds2.x, load_dataset("gmm", n_points=300, split="train").x)


# -------------------------------------------------------------------------------------- toys


@pytest.mark.parametrize("name", ["moons", "swissroll", "gmm"])
def test_toys(name: str) -> None:
    x = toys.TOYS[name](5000, 0)
    assert x.shape == (5000, 2) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert (x.mean(0).abs() < 0.15).all() and ((x.std(0) > 0.7) & (x.std(0) < 1.3)).all()
    assert torch.equal(x, toys.TOYS[name](5000, 0)) and not torch.equal(x, toys.TOYS[name](5000, 1))
    ds = load_dataset(name)
    assert ds.x.shape == (20_000, 2) and ds.kind == "points"
    _expect_user_error([name], toys.TOYS[name], 0)


# ----------------------------------------------------------------------- labels and storage


def test_digits_carry_their_ten_classes_in_image_order() -> None:
    from sklearn.datasets import load_digits as sk

    bunch = sk()
    for split in ("all", "train", "test"):
        ds = load_dataset("digits", split=split)
        rows = split_indices(len(bunch.target), split, labels=bunch.target)
        assert ds.labels.num_classes == 10 and ds.labels.names == [str(k) for k in range(10)]
        np.testing.assert_array_equal(ds.labels.values, bunch.target[rows])
        # The label of image i is the class of the sklearn image it was made from.
        expected = np.rint(bunch.images[rows] * 255 / 16).astype(np.uint8)[:, None]
        np.testing.assert_array_equal(ds.samples.__getitems__(list(range(len(ds)))).x.numpy(), expected)
        got = ds.samples.__getitems__([3, 0, 3])
        assert got.labels.tolist() == [int(bunch.target[rows][i]) for i in (3, 0, 3)]


def test_folder_labels_from_class_folders_and_dataset_json(tmp_path: Path) -> None:
    images = _rng_images(5, 3, 4, 4)
    classes = ["zebra", "cat", "zebra", "dog", "cat"]
    for i, (arr, c) in enumerate(zip(images, classes, strict=True)):
        _save(arr, tmp_path / "set" / "wrapper" / c / f"{i}.png")  # a common wrapper folder is not a class
    ds = load_dataset(str(tmp_path / "set"))
    # Sorted by path: cat/1, cat/4, dog/3, zebra/0, zebra/2; classes numbered in sorted order.
    assert ds.labels.names == ["cat", "dog", "zebra"] and ds.labels.values.tolist() == [0, 0, 1, 2, 2]
    np.testing.assert_array_equal(ds.samples.__getitems__([2]).x.numpy()[0], images[3])
    assert ds.samples.__getitems__([2, 4]).labels.tolist() == [1, 2]
    # A dataset.json at the root wins over folder names (EDM's format, paths relative to the root).
    names = sorted(p.relative_to(tmp_path / "set").as_posix() for p in (tmp_path / "set").rglob("*.png"))
    meta = {"labels": [[n, 7 - k] for k, n in enumerate(names)]}
    (tmp_path / "set" / "dataset.json").write_text(json.dumps(meta))
    ds = load_dataset(str(tmp_path / "set"))
    assert ds.labels.values.tolist() == [7, 6, 5, 4, 3] and ds.labels.num_classes == 8
    # Images loose at the root: no labels.
    _save(images[0], tmp_path / "flat" / "a.png")
    _save(images[1], tmp_path / "flat" / "b.png")
    assert load_dataset(str(tmp_path / "flat")).labels is None


def test_zip_labels_from_dataset_json_and_folders(tmp_path: Path) -> None:
    images = _rng_images(3, 1, 5, 5)

    def png(arr: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(arr[0]).save(buf, "png")
        return buf.getvalue()

    names = [f"00000/img{i:08d}.png" for i in range(3)]  # EDM's layout
    with zipfile.ZipFile(tmp_path / "edm.zip", "w") as zf:
        for name, arr in zip(names, images, strict=True):
            zf.writestr(name, png(arr))
        zf.writestr("dataset.json", json.dumps({"labels": [[n, k] for n, k in zip(names, [4, 0, 2], strict=True)]}))
    ds = load_dataset(str(tmp_path / "edm.zip"))
    assert ds.labels.values.tolist() == [4, 0, 2] and ds.labels.num_classes == 5 and ds.storage == "image files"
    got = ds.samples.__getitems__([0, 1, 2])
    np.testing.assert_array_equal(got.x.numpy(), images)
    assert got.labels.tolist() == [4, 0, 2]
    with zipfile.ZipFile(tmp_path / "unlabelled.zip", "w") as zf:
        for name, arr in zip(names, images, strict=True):
            zf.writestr(name, png(arr))
        zf.writestr("dataset.json", json.dumps({"labels": None}))
    assert load_dataset(str(tmp_path / "unlabelled.zip")).labels is None
    with zipfile.ZipFile(tmp_path / "classes.zip", "w") as zf:
        for name, arr in zip(["b/x.png", "a/y.png", "b/z.png"], images, strict=True):
            zf.writestr(name, png(arr))
    ds = load_dataset(str(tmp_path / "classes.zip"))
    assert ds.labels.names == ["a", "b"] and ds.labels.values.tolist() == [0, 1, 1]


def test_bad_labels_are_one_line_naming_the_file(tmp_path: Path) -> None:
    images = _rng_images(2, 1, 4, 4)
    _save(images[0], tmp_path / "s" / "a.png")
    _save(images[1], tmp_path / "s" / "b.png")
    (tmp_path / "s" / "dataset.json").write_text('{"labels": [["a.png", 1]]}')
    _expect_user_error(["dataset.json", "b.png"], load_dataset, str(tmp_path / "s"))
    (tmp_path / "s" / "dataset.json").write_text('{"labels": [["a.png", 1], ["b.png", -1]]}')
    _expect_user_error(["dataset.json", "class index"], load_dataset, str(tmp_path / "s"))
    (tmp_path / "s" / "dataset.json").write_text("{not json")
    _expect_user_error(["dataset.json", "JSON"], load_dataset, str(tmp_path / "s"))
    np.savez(tmp_path / "short.npz", images=_rng_images(3, 1, 4, 4), labels=np.arange(2))
    _expect_user_error(["short.npz:labels", "(3,)"], load_dataset, str(tmp_path / "short.npz"))
    np.savez(tmp_path / "neg.npz", images=_rng_images(3, 1, 4, 4), labels=np.array([0, -1, 2]))
    _expect_user_error(["neg.npz:labels", "non-negative"], load_dataset, str(tmp_path / "neg.npz"))
    np.savez(tmp_path / "float.npz", images=_rng_images(3, 1, 4, 4), labels=np.array([0.5, 1, 2]))
    _expect_user_error(["float.npz:labels", "float64"], load_dataset, str(tmp_path / "float.npz"))


def test_npz_is_memory_mapped_where_stored_raw(tmp_path: Path) -> None:
    u8 = _rng_images(6, 3, 5, 5)
    labels = np.array([2, 0, 1, 1, 0, 2])
    np.savez(tmp_path / "raw.npz", images=u8.transpose(0, 2, 3, 1), labels=labels)  # NHWC, stored uncompressed
    np.savez_compressed(tmp_path / "deflated.npz", images=u8, labels=labels)
    np.save(tmp_path / "plain.npy", u8)
    np.save(tmp_path / "fortran.npy", np.asfortranarray(u8))
    for name, storage in (("raw.npz", "memory-mapped"), ("deflated.npz", "in memory"),
                          ("plain.npy", "memory-mapped"), ("fortran.npy", "memory-mapped")):
        ds = load_dataset(str(tmp_path / name))
        assert ds.storage == storage, name
        got = ds.samples.__getitems__([5, 0, 5])
        np.testing.assert_array_equal(got.x.numpy(), u8[[5, 0, 5]], err_msg=name)
        assert (got.labels is None) == name.endswith(".npy")
        if got.labels is not None:
            assert got.labels.tolist() == [2, 2, 2] and ds.labels.num_classes == 3
        torch.testing.assert_close(ds.x, torch.from_numpy(u8).float() / 127.5 - 1, rtol=0, atol=0)
    assert load_dataset(str(tmp_path / "raw.npz")).samples.mapping is not None
    # A split keeps the whole set's class count, and its labels follow its images.
    test = load_dataset(str(tmp_path / "raw.npz"), split="test")
    rows = split_indices(6, "test")
    assert test.labels.num_classes == 3 and test.labels.values.tolist() == labels[rows].tolist()
    np.testing.assert_array_equal(test.samples.__getitems__([0]).x.numpy()[0], u8[rows[0]])


def test_image_files_are_decoded_on_demand_and_checked(tmp_path: Path) -> None:
    """A folder opens by reading its first image only; a later file of another size stops the read that meets it
    with one line naming it and the first."""
    _save(_rng_images(1, 1, 8, 8)[0], tmp_path / "d" / "a.png")
    _save(_rng_images(1, 1, 8, 9)[0], tmp_path / "d" / "b.png")
    (tmp_path / "d" / "c.png").write_bytes(b"not an image")
    ds = load_dataset(str(tmp_path / "d"))
    assert ds.shape == (1, 8, 8) and len(ds) == 3
    assert ds.samples.__getitems__([0, 0]).x.shape == (2, 1, 8, 8)
    got = ds.samples.__getitems__([0, 1])
    assert got.x is None and "b.png" in got.error and "a.png" in got.error and "\n" not in got.error
    assert "c.png" in ds.samples.__getitems__([2]).error
    _expect_user_error(["b.png", "fastdiffusion dataset"], lambda: ds.x)


def test_batch_loader_draws_the_global_batch_and_resumes_from_its_position(tmp_path: Path) -> None:
    """Worker processes or not, every rank's rows come from one global draw per step, and a loader restarted from a
    saved position continues with the very batches that followed it."""
    from fastdiffusion.data.loader import BatchLoader

    paths = _write_folder(tmp_path / "f", _rng_images(40, 1, 4, 4))
    for k, p in enumerate(paths):  # two class folders, so batches carry labels
        target = tmp_path / "g" / ("a" if k % 2 else "b") / p.name
        target.parent.mkdir(parents=True, exist_ok=True)
        p.rename(target)
    ds = load_dataset(str(tmp_path / "g"))
    everything = ds.samples.__getitems__(list(range(len(ds))))

    def batches(workers: int, rows: slice, n: int = 5, seed: int = 3) -> list:
        loader = BatchLoader(ds.samples, 8, rows, torch.Generator().manual_seed(seed), workers=workers,
                             pin_memory=False)
        out = [loader.next() for _ in range(n)]
        loader.close()
        return out

    whole = batches(0, slice(None))
    g = torch.Generator().manual_seed(3)
    for got in whole:  # the rows are those of the generator's draw, in order
        idx = torch.randint(len(ds), (8,), generator=g)
        assert torch.equal(got.x, everything.x[idx]) and torch.equal(got.labels, everything.labels[idx])
    for workers in (0, 2):
        halves = zip(batches(workers, slice(0, 4)), batches(workers, slice(4, 8)), strict=True)
        for w, (a, b) in zip(whole, halves, strict=True):
            assert torch.equal(torch.cat([a.x, b.x]), w.x) and torch.equal(torch.cat([a.labels, b.labels]), w.labels)
    loader = BatchLoader(ds.samples, 8, slice(None), torch.Generator().manual_seed(3), workers=2, pin_memory=False)
    loader.next()
    loader.next()
    position = loader.position()  # the workers have drawn batches ahead by now
    assert loader.lookahead == 4 and not torch.equal(position, loader.stream.generator.get_state())
    loader.restart(position)
    assert [torch.equal(loader.next().x, w.x) for w in whole[2:]] == [True] * 3
    loader.close()
