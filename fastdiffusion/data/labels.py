"""Class labels of an image set, one non-negative integer per image: from EDM's ``dataset.json``, from class folders
(the top-level folder of each image, numbered in sorted order) or from an npz ``labels`` array.

``dataset.json`` is EDM's ``{"labels": [[name, label], ...] | null}`` keyed by the image's path inside the folder or
zip; a set written by ``fastdiffusion dataset`` adds ``"class_names"`` (index -> name), which EDM ignores.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np

from ..errors import UserError

__all__ = ["DATASET_JSON", "Labels", "from_array", "from_dataset_json", "from_folders"]

DATASET_JSON = "dataset.json"


@dataclass(frozen=True)
class Labels:
    """Per-image classes (N,) int64 in 0..K-1, K = ``num_classes``, and where known the class names (index -> name)."""

    values: np.ndarray
    num_classes: int
    names: list[str] | None = None

    @classmethod
    def of(cls, values: np.ndarray, names: list[str] | None = None) -> Labels:
        """K = the number of names, else the largest label + 1 (EDM's ``label_dim``)."""
        return cls(values, len(names) if names else int(values.max(initial=0)) + 1, names)

    def subset(self, rows: np.ndarray) -> Labels:
        """The labels of ``rows``; K and the names stay those of the whole set."""
        return Labels(self.values[rows], self.num_classes, self.names)


def from_array(values: np.ndarray, n: int, source: str) -> Labels:
    """Labels from an integer array of one class per image, checked against the ``n`` images."""
    values = np.asarray(values)
    if values.ndim != 1 or len(values) != n:
        raise UserError(f"{source}: labels have shape {values.shape}; expected one integer per image, ({n},)")
    if not (np.issubdtype(values.dtype, np.integer) or values.dtype == np.bool_) or (len(values) and values.min() < 0):
        raise UserError(f"{source}: labels must be non-negative integers (class indices), got dtype {values.dtype}"
                        + (f" with minimum {values.min()}" if np.issubdtype(values.dtype, np.number) else ""))
    return Labels.of(values.astype(np.int64))


def from_dataset_json(text: bytes, names: Sequence[str], source: str) -> Labels | None:
    """The labels EDM's ``dataset.json`` gives the image files ``names`` (paths inside the set); None if it has none."""
    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{source}: not valid JSON ({err}); fix or remove it") from None
    if not isinstance(meta, dict) or meta.get("labels") is None:
        return None
    entries = meta["labels"]
    ok = isinstance(entries, list) and all(
        isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) and isinstance(e[1], int)
        and not isinstance(e[1], bool) and e[1] >= 0 for e in entries)
    if not ok:
        raise UserError(f"{source}: 'labels' must be a list of [file name, class index >= 0] pairs")
    by_name = dict(entries)
    missing = next((n for n in names if n not in by_name), None)
    if missing is not None:
        raise UserError(f"{source}: no label for {missing}; every image needs one (or set \"labels\": null)")
    class_names = meta.get("class_names")
    if class_names is not None and not (isinstance(class_names, list) and all(isinstance(c, str) for c in class_names)):
        raise UserError(f"{source}: 'class_names' must be a list of strings")
    values = np.array([by_name[n] for n in names], dtype=np.int64)
    if class_names and values.max(initial=0) >= len(class_names):
        raise UserError(f"{source}: a label is {values.max()} but only {len(class_names)} class names are given")
    return Labels.of(values, class_names or None)


def from_folders(names: Sequence[str]) -> Labels | None:
    """Class = the top-level folder of each image below the folders all images share, numbered in sorted order;
    None unless every image lies in such a class folder."""
    parts = [PurePosixPath(n).parts for n in names]
    common = 0
    while parts and all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    if not parts or any(len(p) < common + 2 for p in parts):
        return None
    classes = sorted({p[common] for p in parts})
    index = {c: k for k, c in enumerate(classes)}
    return Labels.of(np.array([index[p[common]] for p in parts], dtype=np.int64), classes)
