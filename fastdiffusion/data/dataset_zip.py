"""``fastdiffusion dataset``: an image set written as an EDM-format zip, the form training reads fastest.

The zip holds one PNG per image, ``00000/img00000000.png``, ``00000/img00000001.png``, ... (1,000 per folder), stored
without recompression, and ``dataset.json``: ``{"labels": [[name, class], ...] | null}`` as EDM's ``dataset_tool.py``
writes it, plus ``"class_names"`` (index -> name) where the source names its classes. Sources: a folder of images (class
= top-level subfolder, in sorted order, unless it has a dataset.json), a zip (EDM's own included, with its labels),
an .npz/.npy array (with the npz's ``labels``) or a bundled image set (digits: its 10 classes).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..errors import UserError
from . import BUNDLED, load_dataset, path_and_key
from .images import ImageFiles, decode_image, list_images, open_npz
from .labels import DATASET_JSON, Labels

__all__ = ["TRANSFORMS", "Written", "write_dataset_zip"]

TRANSFORMS = ("center-crop", "resize")


@dataclass(frozen=True)
class Written:
    """What ``write_dataset_zip`` wrote."""

    path: Path
    images: int
    shape: tuple[int, int, int]
    num_classes: int  # 0: unlabelled
    skipped: int  # undecodable files passed over (``skip_bad``)


def _source(src: str) -> tuple[int, Iterator[tuple[str, np.ndarray | UserError]], Labels | None]:
    """The number of images of ``src``, the images in order as (name for errors, uint8 (C, H, W) or the decoding
    error), and their labels."""
    if src.strip().lower() in BUNDLED:
        data = load_dataset(src)
        if data.kind != "image":
            raise UserError(f"{src} is a set of 2-D points, not images: choose an image set (digits, digits16, "
                            f"digits32), a folder, a zip or an .npz")
        images = data.samples.array
        return len(images), ((f"{src}[{i}]", images[i]) for i in range(len(images))), data.labels
    path, key = path_and_key(src)
    if path.is_dir() or path.suffix.lower() == ".zip":
        files = ImageFiles(*list_images(path))

        def decoded() -> Iterator[tuple[str, np.ndarray | UserError]]:
            for i in range(len(files)):
                try:
                    arr: np.ndarray | UserError = decode_image(files.read(i), files.label(i))
                except UserError as err:
                    arr = err
                yield files.label(i), arr

        return len(files), decoded(), files.labels
    if path.suffix.lower() in (".npz", ".npy"):
        array = open_npz(path, key)
        return len(array), ((f"{src}[{i}]", array.array[i]) for i in range(len(array))), array.labels
    raise UserError(f"{src}: unsupported source; use a folder of images, a .zip, a .npz/.npy array or a bundled set "
                    f"({', '.join(BUNDLED)})")


def _transformed(arr: np.ndarray, resolution: int | None, transform: str) -> np.ndarray:
    """``arr`` (C, H, W) centre-cropped to a square and resized, or resized (aspect not kept), to R x R (Lanczos)."""
    if resolution is None:
        return arr
    img = Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))
    if transform == "center-crop":
        w, h = img.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    if img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), Image.Resampling.LANCZOS)
    out = np.asarray(img)
    return out[None] if out.ndim == 2 else out.transpose(2, 0, 1)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))).save(buf, "png")
    return buf.getvalue()


def write_dataset_zip(src: str, dest: str | Path, *, resolution: int | None = None, transform: str | None = None,
                      max_images: int | None = None, skip_bad: bool = False, progress: bool = True) -> Written:
    """Write ``src`` (a folder, zip, .npz/.npy or bundled image set) as the EDM-format zip ``dest``.

    ``resolution`` R makes every image R x R by ``transform`` (default center-crop); without it all images must share
    one size. ``max_images`` stops after that many images. An undecodable file stops with its name, or with
    ``skip_bad`` is passed over and counted. ``dest`` appears only when complete (written beside it, then renamed).
    """
    dest = Path(dest).expanduser()
    if dest.suffix.lower() != ".zip":
        raise UserError(f"{dest}: the output must be a .zip file")
    if dest.exists():
        raise UserError(f"{dest} exists; remove it or choose another name")
    if not dest.parent.is_dir():
        raise UserError(f"{dest.parent}: no such folder for the output")
    if transform is not None and transform not in TRANSFORMS:
        raise UserError(f"--transform must be one of {', '.join(TRANSFORMS)}, got '{transform}'")
    if transform is not None and resolution is None:
        raise UserError(f"--transform {transform} needs --resolution R (the output size)")
    if resolution is not None and resolution < 1 or max_images is not None and max_images < 1:
        raise UserError("--resolution and --max-images must be >= 1")
    total, items, labels = _source(src)
    total = total if max_images is None else min(total, max_images)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    written, skipped, shape, first, entries = 0, 0, None, "", []
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf, \
                tqdm(total=total, desc="dataset", unit="img", disable=not progress) as bar:
            for i, (name, arr) in enumerate(items):
                if written == total:
                    break
                if isinstance(arr, UserError):
                    if not skip_bad:
                        raise UserError(f"{arr}, or pass --skip-bad to leave such files out")
                    skipped += 1
                    continue
                arr = _transformed(arr, resolution, transform or "center-crop")
                if shape is None:
                    shape, first = arr.shape, name
                elif arr.shape != shape:
                    raise UserError(f"{name}: image is {'x'.join(map(str, arr.shape))} (CxHxW) but {first} is "
                                    f"{'x'.join(map(str, shape))}; pass --resolution R to make them all R x R"
                                    if arr.shape[1:] != shape[1:] else
                                    f"{name}: image has {arr.shape[0]} channel(s) but {first} has {shape[0]}; "
                                    f"convert them all to RGB or all to grayscale")
                index = f"{written:08d}"
                member = f"{index[:5]}/img{index}.png"
                zf.writestr(member, _png(arr))
                if labels is not None:
                    entries.append([member, int(labels.values[i])])
                written += 1
                bar.update(1)
            if not written:
                raise UserError(f"{src}: no image could be read ({skipped} skipped)")
            meta: dict = {"labels": entries if labels is not None else None}
            if labels is not None and labels.names:
                meta["class_names"] = labels.names
            zf.writestr(DATASET_JSON, json.dumps(meta))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Written(dest, written, tuple(shape), 0 if labels is None else labels.num_classes, skipped)
