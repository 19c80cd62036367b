"""``fastdiffusion dataset``: EDM-format zips from folders, zips, npz arrays and bundled sets, with their labels; the
transforms; bad files stopped with their name or skipped and counted."""

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastdiffusion.cli import main
from fastdiffusion.data import load_dataset
from fastdiffusion.data.dataset_zip import write_dataset_zip
from fastdiffusion.errors import UserError


def rng_image(h: int, w: int, c: int = 3, seed: int = 0) -> np.ndarray:
    """uint8 (H, W, C) or (H, W) noise."""
    shape = (h, w) if c == 1 else (h, w, c)
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def members(path: Path) -> tuple[list[str], dict]:
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
        return sorted(i.filename for i in infos if i.filename.endswith(".png")), json.loads(zf.read("dataset.json"))


def expect_one_line(needles: list[str], fn, *args, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg
    return msg


def test_folder_of_class_folders_round_trips_with_labels_and_names(tmp_path):
    """Images of several sizes in class folders -> an EDM zip of 8x8 centre crops (PIL Lanczos) whose labels follow
    the sorted class names; training reads it back with the same images and labels."""
    src = tmp_path / "src"
    specs = [("dog", "a.png", 12, 16), ("cat", "b.jpg", 10, 10), ("dog", "c.png", 20, 9), ("bird", "d.png", 8, 8)]
    originals = {}
    for k, (cls, name, h, w) in enumerate(specs):
        arr = rng_image(h, w, seed=k)
        save(arr, src / cls / name)
        originals[f"{cls}/{name}"] = np.asarray(Image.open(src / cls / name).convert("RGB"))
    out = write_dataset_zip(str(src), tmp_path / "out.zip", resolution=8, progress=False)
    assert (out.images, out.shape, out.num_classes, out.skipped) == (4, (3, 8, 8), 3, 0)
    names, meta = members(tmp_path / "out.zip")
    assert names == [f"00000/img{i:08d}.png" for i in range(4)]
    assert meta["class_names"] == ["bird", "cat", "dog"]
    # Source order is sorted by path: bird/d, cat/b, dog/a, dog/c.
    assert meta["labels"] == [[n, k] for n, k in zip(names, [0, 1, 2, 2], strict=True)]
    ds = load_dataset(str(tmp_path / "out.zip"))
    assert ds.labels.values.tolist() == [0, 1, 2, 2] and ds.labels.names == ["bird", "cat", "dog"]
    got = ds.samples.__getitems__(list(range(4))).x.numpy()
    for i, key in enumerate(["bird/d.png", "cat/b.jpg", "dog/a.png", "dog/c.png"]):
        img = Image.fromarray(originals[key])
        side = min(img.size)
        left, top = (img.size[0] - side) // 2, (img.size[1] - side) // 2
        want = np.asarray(img.crop((left, top, left + side, top + side)).resize((8, 8), Image.Resampling.LANCZOS))
        np.testing.assert_array_equal(got[i], want.transpose(2, 0, 1), err_msg=key)


def test_edm_zip_round_trip_keeps_images_and_labels(tmp_path):
    """A zip in EDM's format (as its dataset_tool writes) is read with its labels and rewritten identically."""
    names = [f"00000/img{i:08d}.png" for i in range(5)]
    images = [rng_image(6, 6, c=1, seed=i) for i in range(5)]
    with zipfile.ZipFile(tmp_path / "edm.zip", "w") as zf:
        for name, arr in zip(names, images, strict=True):
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, "png")
            zf.writestr(name, buf.getvalue())
        zf.writestr("dataset.json", json.dumps({"labels": [[n, k % 3] for k, n in enumerate(names)]}))
    out = write_dataset_zip(str(tmp_path / "edm.zip"), tmp_path / "again.zip", progress=False)
    assert out.shape == (1, 6, 6) and out.num_classes == 3
    again_names, meta = members(tmp_path / "again.zip")
    assert again_names == names and meta["labels"] == [[n, k % 3] for k, n in enumerate(names)]
    ds = load_dataset(str(tmp_path / "again.zip"))
    np.testing.assert_array_equal(ds.samples.__getitems__(list(range(5))).x.numpy()[:, 0], np.stack(images))


def test_npz_with_labels_and_bundled_digits(tmp_path):
    u8 = np.random.default_rng(1).integers(0, 256, size=(7, 4, 4, 3), dtype=np.uint8)  # NHWC
    np.savez(tmp_path / "a.npz", images=u8, labels=np.array([3, 1, 0, 3, 2, 1, 0]))
    out = write_dataset_zip(str(tmp_path / "a.npz"), tmp_path / "a.zip", max_images=5, progress=False)
    assert out.images == 5 and out.num_classes == 4
    ds = load_dataset(str(tmp_path / "a.zip"))
    assert ds.labels.values.tolist() == [3, 1, 0, 3, 2]
    np.testing.assert_array_equal(ds.samples.__getitems__(list(range(5))).x.numpy(), u8[:5].transpose(0, 3, 1, 2))
    np.savez(tmp_path / "plain.npz", u8)
    assert members_labels(write_dataset_zip(str(tmp_path / "plain.npz"), tmp_path / "p.zip", progress=False)) is None
    assert main(["dataset", "digits", str(tmp_path / "d.zip"), "--quiet"]) == 0
    digits, ds = load_dataset("digits"), load_dataset(str(tmp_path / "d.zip"))
    assert np.array_equal(ds.labels.values, digits.labels.values) and ds.labels.names == [str(k) for k in range(10)]
    assert np.array_equal(ds.samples.__getitems__(list(range(len(ds)))).x.numpy(), digits.samples.array)


def members_labels(out) -> list | None:
    return members(out.path)[1]["labels"]


def test_resize_transform_and_uniform_sizes(tmp_path):
    save(rng_image(6, 12), tmp_path / "s" / "wide.png")
    save(rng_image(6, 6, seed=1), tmp_path / "s" / "square.png")
    expect_one_line(["wide.png", "square.png", "--resolution"], write_dataset_zip, str(tmp_path / "s"),
                    tmp_path / "x.zip", progress=False)
    assert not (tmp_path / "x.zip").exists() and not list(tmp_path.glob(".x.zip*"))
    write_dataset_zip(str(tmp_path / "s"), tmp_path / "r.zip", resolution=4, transform="resize", progress=False)
    got = load_dataset(str(tmp_path / "r.zip")).samples.__getitems__([1]).x.numpy()[0]
    want = Image.open(tmp_path / "s" / "wide.png").resize((4, 4), Image.Resampling.LANCZOS)
    np.testing.assert_array_equal(got, np.asarray(want).transpose(2, 0, 1))
    save(rng_image(6, 6, c=1, seed=2), tmp_path / "s" / "zgray.png")
    expect_one_line(["zgray.png", "channel"], write_dataset_zip, str(tmp_path / "s"), tmp_path / "y.zip",
                    resolution=4, progress=False)


def test_bad_files_stop_with_their_name_or_are_skipped_and_counted(tmp_path, capsys):
    for k in range(3):
        save(rng_image(5, 5, seed=k), tmp_path / "s" / f"{k}.png")
    (tmp_path / "s" / "1b.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    (tmp_path / "s" / "2b.jpg").write_bytes(b"")
    expect_one_line(["1b.png", "--skip-bad"], write_dataset_zip, str(tmp_path / "s"), tmp_path / "x.zip",
                    progress=False)
    assert main(["dataset", str(tmp_path / "s"), str(tmp_path / "x.zip"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1b.png" in err[0]
    assert main(["dataset", str(tmp_path / "s"), str(tmp_path / "ok.zip"), "--skip-bad", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "wrote 3 images (3x5x5, no labels)" in out and "skipped 2 undecodable file(s)" in out
    assert members(tmp_path / "ok.zip") == ([f"00000/img{i:08d}.png" for i in range(3)], {"labels": None})


@pytest.mark.parametrize(("args", "needle"), [
    (["{tmp}/nope", "{tmp}/o.zip"], "no such file"),
    (["moons", "{tmp}/o.zip"], "points"),
    (["digits", "{tmp}/o.tar"], ".zip"),
    (["digits", "{tmp}/exists.zip"], "exists"),
    (["digits", "{tmp}/o.zip", "--transform", "resize"], "--resolution"),
    (["digits", "{tmp}/o.zip", "--resolution", "8", "--transform", "stretch"], "center-crop"),
])
def test_dataset_bad_input_is_one_line(tmp_path, capsys, args, needle):
    (tmp_path / "exists.zip").write_bytes(b"")
    assert main(["dataset", *[a.replace("{tmp}", str(tmp_path)) for a in args], "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
