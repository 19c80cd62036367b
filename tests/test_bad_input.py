"""Property-based bad input: CLI arguments, configs and data files end in a clean error and exit code, never a
traceback or a hang."""

import io
import json
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fastdiffusion.cli import main
from fastdiffusion.data import load_dataset
from fastdiffusion.errors import UserError
from fastdiffusion.training import TrainConfig, train

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def run_cli(argv) -> int:
    """main()'s exit code; argparse's own errors arrive as SystemExit(2)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    run = tmp_path_factory.mktemp("fuzz") / "run"
    train(TrainConfig(run_dir=str(run), data="digits", net="ddpmpp-tiny", batch=8, steps=1, grid_images=1,
                      grid_nfe=1), quiet=True)
    return run


samplers = st.sampled_from(["heun", "euler", "nope", "", "HEUN"])
numbers = st.one_of(st.integers(-5, 12).map(str), st.sampled_from(["x", "1.5", "", "1e3", "nan"]))
seed_specs = st.sampled_from(["0-3", "3-0", "a", "", "1,2,", "-1", "0-2,5"])


@SETTINGS
@given(sampler=samplers, nfe=numbers, seeds=seed_specs, batch=numbers,
       opt=st.sampled_from([[], ["--opt", "churn=2"], ["--opt", "churn"], ["--opt", "lam=1"], ["--opt", "=3"]]),
       out=st.sampled_from(["g.png", "s.npz", "dir", "x.jpg"]))
def test_sample_arguments(tiny_model, tmp_path, sampler, nfe, seeds, batch, opt, out):
    code = run_cli(["sample", str(tiny_model), "--sampler", sampler, "--nfe", nfe, "--seeds", seeds, "--batch",
                    batch, "--out", str(tmp_path / out), "--quiet", *opt])
    assert code in (0, 2)


@SETTINGS
@given(batch=numbers, accum=numbers, steps=numbers, lr=st.sampled_from(["0", "-1", "abc", "inf?", "nan"]),
       precision=st.sampled_from(["fp16", "auto!", "FP32", ""]))
def test_train_arguments_rejected_cleanly(tmp_path, batch, accum, steps, lr, precision):
    code = run_cli(["train", "--run-dir", str(tmp_path / "r"), "--batch", batch, "--accum", accum, "--steps", steps,
                    "--lr", lr, "--precision", precision, "--quiet"])
    assert code == 2
    assert not (tmp_path / "r").exists()


config_values = st.one_of(st.none(), st.integers(-3, 3), st.floats(allow_nan=True), st.text(max_size=5),
                          st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers()))


@SETTINGS
@given(obj=st.dictionaries(st.sampled_from(["batch", "steps", "lr", "precision", "accum", "bogus", "process",
                                             "on_faults", "adam_betas"]), config_values, max_size=4))
def test_config_files(tmp_path, obj):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(obj))
    try:
        TrainConfig.from_json(obj).validate()
    except UserError:
        # The CLI turns the same file into a one-line error and exit code 2, before touching the run directory.
        assert run_cli(["train", "--config", str(path), "--run-dir", str(tmp_path / "r"), "--quiet"]) == 2
        assert not (tmp_path / "r").exists()


@SETTINGS
@given(blobs=st.lists(st.binary(max_size=64), min_size=1, max_size=3))
def test_garbage_image_files(tmp_path, blobs):
    folder = tmp_path / "imgs"
    folder.mkdir(exist_ok=True)
    for i, blob in enumerate(blobs):
        (folder / f"{i}.png").write_bytes(blob)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i, blob in enumerate(blobs):
            z.writestr(f"{i}.png", blob)
    (tmp_path / "a.zip").write_bytes(buf.getvalue())
    for spec in (folder, tmp_path / "a.zip"):
        with pytest.raises(UserError):
            load_dataset(str(spec))


@SETTINGS
@given(arr=arrays(dtype=st.sampled_from([np.uint8, np.float32, np.int64, np.float64, np.bool_]),
                  shape=st.lists(st.integers(0, 5), min_size=0, max_size=5).map(tuple)))
def test_npz_arrays(tmp_path, arr):
    path = tmp_path / "d.npz"
    np.savez(path, images=arr)
    try:
        data = load_dataset(str(path))
    except UserError:
        return
    assert data.x.ndim == 4 and np.isfinite(data.x.numpy()).all()


@pytest.mark.parametrize("kind", ["folder", "npz"])
def test_eval_of_colour_images_against_the_grayscale_default_is_one_line(tmp_path, capsys, kind):
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    if kind == "npz":
        source = tmp_path / "rgb.npz"
        np.savez(source, samples=rgb)
    else:
        source = tmp_path / "rgb"
        source.mkdir()
        for i, img in enumerate(rgb):
            Image.fromarray(img).save(source / f"{i}.png")
    assert run_cli(["eval", str(source), "--quiet"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(source) in lines[0] and "3-channel" in lines[0] and "grayscale" in lines[0]
    assert "--reference" in lines[0]
    assert run_cli(["eval", str(source), "--reference", str(source), "--metrics", "sliced", "--quiet"]) == 0
