"""Image readers: bundled digits, image folders, zip archives and npz arrays, as uint8 (N, C, H, W), with labels.

Folders and zips are opened as ``ImageFiles`` (decoded one batch at a time, in DataLoader workers while training);
npz/npy arrays as ``ArraySamples`` over a memory map where the file stores the array as raw uint8 (an .npy, or an
uncompressed .npz member), read into memory otherwise. ``load_folder``/``load_zip``/``load_npz`` read a whole set.

Conventions shared by every reader:
- Channels: grayscale ('1', 'L', 'LA', 16-bit 'I;16') → C = 1; colour ('RGB', 'RGBA', 'P', 'CMYK', ...)
  → C = 3; alpha is dropped (not composited). 16-bit grayscale keeps its 8 most significant bits.
- All images of one set must share one size (rectangular is allowed) and one channel count; the first image
  fixes both and the first file that differs is named in the error.
- Files: extensions png/jpg/jpeg/bmp/webp (any case), found recursively and sorted by their path relative to
  the root; names starting with '.' and '__MACOSX' folders are skipped. Animated files: first frame.
- Every bad input raises `UserError` with a one-line message naming the file.
- Labels (``labels.py``): a ``dataset.json`` at the root of the folder or zip (EDM's), else class folders; an npz's
  ``labels`` array.
"""

from __future__ import annotations

import io
import mmap
import os
import struct
import zipfile
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset as TorchDataset

from fastdiffusion.errors import UserError

from .labels import DATASET_JSON, Labels, from_array, from_dataset_json, from_folders
from .samples import ArraySamples, Fetched, label_batch, read_all, resize_uint8

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "ImageFiles",
    "decode_image",
    "digit_labels",
    "load_digits",
    "load_folder",
    "load_zip",
    "load_npz",
    "open_files",
    "open_npz",
    "split_indices",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SPLITS = ("all", "train", "test")
TEST_FRACTION = 0.2
SPLIT_SEED = 0


# ------------------------------------------------------------------------------------ splits


def split_indices(n: int, split: str, labels: np.ndarray | None = None) -> np.ndarray:
    """Sorted indices of `split` in a fixed 80/20 train/test partition of range(n).

    The partition is scikit-learn's `train_test_split(test_size=0.2, random_state=0)`, stratified by `labels`
    when given, so it is the same on every machine; 'all' returns arange(n). Train and test are disjoint and
    together cover range(n).
    """
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    idx = np.arange(n)
    if split == "all":
        return idx
    if n < 2:
        raise UserError(f"cannot make a train/test split of {n} sample(s): use split='all'")
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(idx, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=labels)
    return np.sort(train if split == "train" else test)


# ---------------------------------------------------------------------------- bundled digits


def load_digits(resolution: int = 8, split: str = "all") -> np.ndarray:
    """scikit-learn's bundled 8×8 handwritten digits (1797 images, 10 classes) as uint8 (N, 1, R, R).

    Pixel values 0..16 map to round(v · 255 / 16); R ≠ 8 is reached by bilinear resizing of those float values
    (R = 8, 16 and 32 have named specs `digits`, `digits16`, `digits32`). `split` picks from a fixed
    stratified 80/20 partition (`split_indices`): 1437 train and 360 test images.
    """
    if not isinstance(resolution, int) or resolution < 1:
        raise UserError(f"digits: resolution must be a positive integer (8, 16 or 32), got {resolution!r}")
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    idx = split_indices(len(bunch.target), split, labels=bunch.target)
    x = torch.from_numpy(bunch.images[idx]).float().unsqueeze(1) * (255.0 / 16.0)
    if resolution != 8:
        x = torch.nn.functional.interpolate(
            x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False
        )
    return x.round().clamp(0, 255).to(torch.uint8).numpy()


def digit_labels(split: str = "all") -> np.ndarray:
    """The classes 0-9 of `load_digits(split=split)`'s images, in the same order, as int64."""
    from sklearn.datasets import load_digits as sk_load_digits

    target = sk_load_digits().target
    return target[split_indices(len(target), split, labels=target)].astype(np.int64)


# ------------------------------------------------------------------------------- image files


def _one_line(err: BaseException) -> str:
    """`Type: message` of an exception, squeezed onto one line for a UserError message."""
    return f"{type(err).__name__}: " + " ".join(str(err).split())


def _is_image_name(name: str) -> bool:
    parts = PurePosixPath(name).parts
    if not parts or any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return False
    return name.lower().endswith(IMAGE_EXTENSIONS)


def decode_image(data: bytes | Path, label: str) -> np.ndarray:
    """Decode one image file to uint8 (C, H, W) with C in {1, 3}; `label` names it in errors."""
    try:
        with Image.open(data if isinstance(data, Path) else io.BytesIO(data)) as img:
            img.load()
            mode = img.mode
            if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
                arr = (np.asarray(img).astype(np.uint32) >> 8).astype(np.uint8)
            elif mode in ("1", "L", "LA", "La"):
                arr = np.asarray(img.convert("L"))
            elif mode in ("I", "F"):
                raise UserError(
                    f"{label}: unsupported {mode!r} (32-bit) image mode; save it as 8-bit grayscale or RGB"
                )
            else:
                arr = np.asarray(img.convert("RGBA" if mode in ("P", "PA") else img.mode).convert("RGB"))
    except UserError:
        raise
    except Exception as err:  # any decoder failure is a property of the user's file
        raise UserError(f"{label}: cannot read image ({_one_line(err)}); remove or re-save it") from None
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _existing(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{p}: no such file or directory")
    return p


class ImageFiles(TorchDataset):
    """The image files of a folder or zip archive (``names``: paths inside it, sorted), decoded on demand.

    The first image fixes the size and channel count; a file that differs is an error naming both. ``size`` resizes
    images as they are read. Each process opens its own handle on a zip (DataLoader workers read in parallel).
    """

    def __init__(self, root: Path, names: list[str], labels: Labels | None = None,
                 size: tuple[int, int] | None = None) -> None:
        self.root, self.names, self.labels, self.size = root, names, labels, size
        self.is_zip = root.is_file()
        self._zip: zipfile.ZipFile | None = None
        self._zip_pid = -1

    @cached_property
    def first(self) -> np.ndarray:
        """The first image, which fixes the size and channel count of the set."""
        return decode_image(self.read(0), self.label(0))

    def __len__(self) -> int:
        return len(self.names)

    @property
    def shape(self) -> tuple[int, ...]:
        """Per-sample shape (C, H, W) after resizing."""
        c, h, w = self.first.shape
        return (c, h, w) if self.size is None else (c, *self.size)

    def label(self, i: int) -> str:
        """How errors name file ``i``: its path, or ``archive.zip:member``."""
        return f"{self.root}:{self.names[i]}" if self.is_zip else str(self.root / self.names[i])

    def read(self, i: int) -> bytes | Path:
        """File ``i``'s bytes (zip member) or path (folder)."""
        if not self.is_zip:
            return self.root / self.names[i]
        if self._zip is None or self._zip_pid != os.getpid():  # a forked worker must not share the parent's handle
            self._zip, self._zip_pid = open_zip(self.root), os.getpid()
        try:
            return self._zip.read(self.names[i])
        except Exception as err:  # CRC errors, unsupported compression, encryption, ...
            raise UserError(f"{self.label(i)}: cannot extract from the zip ({_one_line(err)})") from None

    def decode(self, i: int) -> np.ndarray:
        """Image ``i`` as uint8 (C, H, W), checked against the first image's size and channel count."""
        if i == 0:
            return self.first
        arr = decode_image(self.read(i), self.label(i))
        first = self.first.shape
        if arr.shape[1:] != first[1:]:
            raise UserError(
                f"{self.label(i)}: image is {arr.shape[2]}x{arr.shape[1]} (WxH) but {self.label(0)} is "
                f"{first[2]}x{first[1]}; all images must share one size (make a uniform set with "
                f"`fastdiffusion dataset SRC out.zip --resolution R`)"
            )
        if arr.shape[0] != first[0]:
            names = {1: "grayscale (1 channel)", 3: "RGB (3 channels)"}
            raise UserError(
                f"{self.label(i)}: image is {names[arr.shape[0]]} but {self.label(0)} is {names[first[0]]}; "
                f"all images must share one channel count (convert them all to RGB or all to grayscale)"
            )
        return arr

    def __getitems__(self, indices: Sequence[int]) -> Fetched:
        try:
            x = np.stack([self.decode(int(i)) for i in indices])
        except UserError as err:
            return Fetched(None, None, str(err))
        if self.size is not None:
            x = resize_uint8(x, self.size)
        return Fetched(torch.from_numpy(x), label_batch(self.labels, indices))

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.decode(i))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_zip": None}


def open_zip(path: Path) -> zipfile.ZipFile:
    """The zip archive at `path`, or a one-line UserError."""
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise UserError(f"{path}: not a readable zip archive ({_one_line(err)})") from None


def open_files(path: str | Path) -> ImageFiles:
    """The images of a folder (recursive, sorted by relative path) or zip (sorted by member name) with their labels:
    the root ``dataset.json``'s, else class folders'. The first image is decoded here, so an unreadable one stops
    at once."""
    files = ImageFiles(*list_images(path))
    files.decode(0)
    return files


def list_images(path: str | Path) -> tuple[Path, list[str], Labels | None]:
    """The root, the image files (paths inside it) and their labels of a folder or zip (see ``open_files``)."""
    root = _existing(path)
    if root.is_dir():
        names = sorted(f.relative_to(root).as_posix() for f in root.rglob("*")
                       if f.is_file() and _is_image_name(f.relative_to(root).as_posix()))
        meta_path = root / DATASET_JSON
        meta = meta_path.read_bytes() if meta_path.is_file() else None
    else:
        with open_zip(root) as zf:
            members = {i.filename for i in zf.infolist() if not i.is_dir()}
            names = sorted(n for n in members if _is_image_name(n))
            meta = zf.read(DATASET_JSON) if DATASET_JSON in members else None
    if not names:
        raise UserError(f"{root}: no images found (looked for {'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} files)")
    source = f"{root}{'/' if root.is_dir() else ':'}{DATASET_JSON}"
    labels = from_dataset_json(meta, names, source) if meta is not None else from_folders(names)
    return root, names, labels


def load_folder(path: str | Path) -> np.ndarray:
    """All images under the folder `path` (recursive, sorted by relative path) as uint8 (N, C, H, W)."""
    root = _existing(path)
    if not root.is_dir():
        raise UserError(f"{root}: not a folder (expected a folder of images, a .zip or a .npz file)")
    return read_all(open_files(root)).x.numpy()


def load_zip(path: str | Path) -> np.ndarray:
    """All images inside the zip archive `path` (sorted by member name) as uint8 (N, C, H, W).

    Errors name the member as `archive.zip:member/name.png`.
    """
    return read_all(open_files(_existing(path))).x.numpy()


# -------------------------------------------------------------------------------- npz arrays

_NPZ_DEFAULT_KEYS = ("images", "x", "data", "arr_0")
LABELS_KEY = "labels"


def _npz_member_start(path: Path, key: str) -> int | None:
    """Where the .npy of array `key` starts inside the .npz `path`, if the zip stores it as is (not deflated)."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(f"{key}.npy")
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:  # deflated or encrypted
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)  # the local file header; its name and extra field lengths say where the data starts
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        return None
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _map_npy(path: Path, start: int) -> tuple[np.ndarray, mmap.mmap] | None:
    """The .npy stored at byte `start` of `path` as a read-only memory map, with its mmap; None if its header version
    or layout (Fortran order, objects) is not one to map."""
    with open(path, "rb") as f:
        f.seek(start)
        version = np.lib.format.read_magic(f)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:
            return None
        shape, fortran, dtype = read_header(f)
        if fortran or dtype.hasobject or not shape:
            return None
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        offset = f.tell()
    count = int(np.prod(shape))
    return np.frombuffer(mapping, dtype=dtype, count=count, offset=offset).reshape(shape), mapping


def open_npz(path: str | Path, key: str | None = None) -> ArraySamples:
    """An image array of a .npz (or .npy) file as uint8 (N, C, H, W), memory-mapped when the file stores it as raw
    uint8 (an .npy, or an .npz member saved without compression), with the npz's `labels` array if it has one.

    Key: `key` if given; else the only array besides `labels`, or else the first of images/x/data/arr_0 present.
    Layout by ndim: (N, H, W) → C = 1; 4-D is (N, C, H, W) when shape[1] ∈ {1, 3} (preferred when ambiguous),
    else (N, H, W, C) when shape[3] ∈ {1, 3}.
    Values by dtype: uint8 as is; other integer dtypes must lie in 0..255; floats must be finite and lie in
    [0, 1] (→ round(255 x)) or, if some are negative, in [−1, 1] (→ round(127.5 (x + 1))), with 1e-3 slack.
    Anything else raises UserError.
    """
    p = _existing(path)
    try:
        loaded = np.load(p, allow_pickle=False, mmap_mode="r")
    except Exception as err:
        raise UserError(f"{p}: cannot read as .npz/.npy ({_one_line(err)})") from None
    labels, mapped = None, None
    if isinstance(loaded, np.ndarray):
        if key is not None:
            raise UserError(f"{p}: a .npy file holds a single array; drop the key {key!r}")
        mapped = _map_npy(p, 0)
        arr = loaded if mapped is None else mapped[0]
    else:
        with loaded:
            keys = list(loaded.files)
            if key is None:
                images = [k for k in keys if k != LABELS_KEY]
                candidates = images if len(images) == 1 else [k for k in _NPZ_DEFAULT_KEYS if k in keys]
                if not candidates:
                    raise UserError(f"{p}: holds arrays {keys}; name the one to use as '{p.name}:KEY'")
                key = candidates[0]
            if key not in keys:
                raise UserError(f"{p}: no array named {key!r}; it holds {keys}")
            try:
                start = _npz_member_start(p, key)
                mapped = None if start is None else _map_npy(p, start)
                arr = loaded[key] if mapped is None else mapped[0]
                if LABELS_KEY in keys and key != LABELS_KEY:
                    labels = loaded[LABELS_KEY]
            except UserError:
                raise
            except Exception as err:
                raise UserError(f"{p}: cannot read array {key!r} ({_one_line(err)})") from None
    name = f"{p}" + (f":{key}" if key is not None else "")
    images = _npz_to_uint8(arr, name)
    mapping = mapped[1] if mapped is not None and images.dtype == arr.dtype else None
    return ArraySamples(images, None if labels is None else from_array(labels, len(images), f"{p}:{LABELS_KEY}"),
                        mapping=mapping)


def load_npz(path: str | Path, key: str | None = None) -> np.ndarray:
    """The image array of a .npz (or .npy) file as uint8 (N, C, H, W) in memory (`open_npz` says which array)."""
    return np.ascontiguousarray(open_npz(path, key).array)


def _npz_to_uint8(arr: np.ndarray, label: str) -> np.ndarray:
    """`arr` as uint8 (N, C, H, W): a view of it (no copy, a memory map stays one) when it is uint8 already."""
    shape = tuple(arr.shape)
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4 and shape[1] in (1, 3):
        pass
    elif arr.ndim == 4 and shape[3] in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)
    else:
        raise UserError(
            f"{label}: array shape {shape} is not (N,H,W), (N,H,W,C) or (N,C,H,W) with C = 1 or 3"
        )
    if min(arr.shape) == 0:
        raise UserError(f"{label}: array shape {shape} is empty")
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise UserError(f"{label}: integer values span [{lo}, {hi}]; expected 0..255 (or store uint8)")
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        a = arr.astype(np.float64)
        if not np.isfinite(a).all():
            raise UserError(f"{label}: array contains NaN or infinite values")
        lo, hi, tol = float(a.min()), float(a.max()), 1e-3
        if lo >= -tol and hi <= 1 + tol:
            a = a * 255.0
        elif lo >= -1 - tol and hi <= 1 + tol:
            a = (a + 1.0) * 127.5
        else:
            raise UserError(f"{label}: float values span [{lo:.4g}, {hi:.4g}]; expected [0, 1] or [-1, 1]")
        return np.clip(np.rint(a), 0, 255).astype(np.uint8)
    raise UserError(f"{label}: unsupported dtype {arr.dtype}; expected uint8, integers 0..255 or floats")
