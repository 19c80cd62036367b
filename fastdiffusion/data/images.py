"""Image readers: bundled digits, image folders, zip archives and npz arrays, all as uint8 (N, C, H, W).

Conventions shared by every reader:
- Channels: grayscale ('1', 'L', 'LA', 16-bit 'I;16') → C = 1; colour ('RGB', 'RGBA', 'P', 'CMYK', ...)
  → C = 3; alpha is dropped (not composited). 16-bit grayscale keeps its 8 most significant bits.
- All images of one set must share one size (rectangular is allowed) and one channel count; the first image
  fixes both and the first file that differs is named in the error.
- Files: extensions png/jpg/jpeg/bmp/webp (any case), found recursively and sorted by their path relative to
  the root; names starting with '.' and '__MACOSX' folders are skipped. Animated files: first frame.
- Every bad input raises `UserError` with a one-line message naming the file.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image

from fastdiffusion.errors import UserError

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "load_digits",
    "load_folder",
    "load_zip",
    "load_npz",
    "split_indices",
    "resize_uint8",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SPLITS = ("all", "train", "test")
TEST_FRACTION = 0.2
SPLIT_SEED = 0


# --------------------------------------------------------------------------- splits / resize


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


def resize_uint8(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize uint8 (N, C, H, W) images to size = (H', W') with antialiased bilinear interpolation.

    Interpolation runs in float32 (torch `interpolate(mode='bilinear', antialias=True, align_corners=False)`),
    then values are rounded and clipped back to 0..255. A no-op when the size already matches.
    """
    if tuple(images.shape[2:]) == tuple(size):
        return images
    x = torch.from_numpy(np.ascontiguousarray(images)).float()
    y = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8).numpy()


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


# ------------------------------------------------------------------------------- image files


def _one_line(err: BaseException) -> str:
    """`Type: message` of an exception, squeezed onto one line for a UserError message."""
    return f"{type(err).__name__}: " + " ".join(str(err).split())


def _is_image_name(name: str) -> bool:
    parts = PurePosixPath(name).parts
    if not parts or any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return False
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _decode(data: bytes | Path, label: str) -> np.ndarray:
    """Decode one image file to uint8 (C, H, W) with C in {1, 3}."""
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


def _stack(items: Iterable[tuple[str, bytes | Path]], source: str) -> np.ndarray:
    """Decode (label, data) pairs and stack them, enforcing one shared size and channel count."""
    first_label = ""
    first_shape: tuple[int, ...] = ()
    images: list[np.ndarray] = []
    for label, data in items:
        arr = _decode(data, label)
        if not images:
            first_label, first_shape = label, arr.shape
        elif arr.shape[1:] != first_shape[1:]:
            raise UserError(
                f"{label}: image is {arr.shape[2]}x{arr.shape[1]} (WxH) but {first_label} is "
                f"{first_shape[2]}x{first_shape[1]}; all images must share one size (resize them to match)"
            )
        elif arr.shape[0] != first_shape[0]:
            names = {1: "grayscale (1 channel)", 3: "RGB (3 channels)"}
            raise UserError(
                f"{label}: image is {names[arr.shape[0]]} but {first_label} is {names[first_shape[0]]}; "
                f"all images must share one channel count (convert them all to RGB or all to grayscale)"
            )
        images.append(arr)
    if not images:
        raise UserError(
            f"{source}: no images found (looked for {'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} files)"
        )
    return np.stack(images)


def _existing(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{p}: no such file or directory")
    return p


def load_folder(path: str | Path) -> np.ndarray:
    """All images under the folder `path` (recursive, sorted by relative path) as uint8 (N, C, H, W)."""
    root = _existing(path)
    if not root.is_dir():
        raise UserError(f"{root}: not a folder (expected a folder of images, a .zip or a .npz file)")

    def items() -> Iterator[tuple[str, Path]]:
        files = [f for f in root.rglob("*") if f.is_file() and _is_image_name(f.relative_to(root).as_posix())]
        for f in sorted(files, key=lambda f: f.relative_to(root).as_posix()):
            yield str(f), f

    return _stack(items(), str(root))


def load_zip(path: str | Path) -> np.ndarray:
    """All images inside the zip archive `path` (sorted by member name) as uint8 (N, C, H, W).

    Errors name the member as `archive.zip:member/name.png`.
    """
    p = _existing(path)
    try:
        zf = zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError) as err:
        raise UserError(f"{p}: not a readable zip archive ({_one_line(err)})") from None
    with zf:
        names = sorted(i.filename for i in zf.infolist() if not i.is_dir() and _is_image_name(i.filename))

        def items() -> Iterator[tuple[str, bytes]]:
            for name in names:
                label = f"{p}:{name}"
                try:
                    data = zf.read(name)
                except Exception as err:  # CRC errors, unsupported compression, encryption, ...
                    raise UserError(f"{label}: cannot extract from the zip ({_one_line(err)})") from None
                yield label, data

        return _stack(items(), str(p))


# -------------------------------------------------------------------------------- npz arrays

_NPZ_DEFAULT_KEYS = ("images", "x", "data", "arr_0")


def load_npz(path: str | Path, key: str | None = None) -> np.ndarray:
    """An image array stored in a .npz (or .npy) file, as uint8 (N, C, H, W).

    Key: `key` if given; else the only array in the file, or else the first of images/x/data/arr_0 present.
    Layout by ndim: (N, H, W) → C = 1; 4-D is (N, C, H, W) when shape[1] ∈ {1, 3} (preferred when ambiguous),
    else (N, H, W, C) when shape[3] ∈ {1, 3}.
    Values by dtype: uint8 as is; other integer dtypes must lie in 0..255; floats must be finite and lie in
    [0, 1] (→ round(255 x)) or, if some are negative, in [−1, 1] (→ round(127.5 (x + 1))), with 1e-3 slack.
    Anything else raises UserError.
    """
    p = _existing(path)
    try:
        loaded = np.load(p, allow_pickle=False)
    except Exception as err:
        raise UserError(f"{p}: cannot read as .npz/.npy ({_one_line(err)})") from None
    if isinstance(loaded, np.ndarray):
        if key is not None:
            raise UserError(f"{p}: a .npy file holds a single array; drop the key {key!r}")
        arr = loaded
    else:
        with loaded:
            keys = list(loaded.files)
            if key is None:
                candidates = keys if len(keys) == 1 else [k for k in _NPZ_DEFAULT_KEYS if k in keys]
                if not candidates:
                    raise UserError(f"{p}: holds arrays {keys}; name the one to use as '{p.name}:KEY'")
                key = candidates[0]
            if key not in keys:
                raise UserError(f"{p}: no array named {key!r}; it holds {keys}")
            try:
                arr = loaded[key]
            except Exception as err:
                raise UserError(f"{p}: cannot read array {key!r} ({_one_line(err)})") from None
    return _npz_to_uint8(arr, f"{p}" + (f":{key}" if key is not None else ""))


def _npz_to_uint8(arr: np.ndarray, label: str) -> np.ndarray:
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
        out = arr
    elif np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise UserError(f"{label}: integer values span [{lo}, {hi}]; expected 0..255 (or store uint8)")
        out = arr.astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
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
        out = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    else:
        raise UserError(f"{label}: unsupported dtype {arr.dtype}; expected uint8, integers 0..255 or floats")
    return np.ascontiguousarray(out)
