"""A restricted unpickler: rebuilds tensors, plain containers and the class records of NVlabs/edm's
``torch_utils.persistence`` from a pickle without running any code from it.

A pickle runs code only through the globals it names (``find_class``: the GLOBAL, STACK_GLOBAL, INST, OBJ and EXT
opcodes) and the persistent ids it resolves (``persistent_load``); every other opcode builds plain containers and
scalars. Both hooks here answer from a fixed table of this module's own functions: a persistent-class record becomes a
``ClassRecord`` (its class name and state; the pickled source text is never executed), a torch storage is read as raw
bytes into a tensor, a numpy scalar from its bytes. Any other global -- ``os.system``, ``builtins.eval``, a torch or
user class -- stops the load at that opcode, before it is called (docs/models.md, "Security").

Two tensor containers are read: EDM's, where each storage is a nested legacy ``torch.save`` blob
(``torch.storage._load_from_bytes``), and the zip format of ``torch.save`` (``.pt``/``.bin`` files), where storages are
persistent ids naming entries of the archive.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError

__all__ = ["ClassRecord", "ModuleRecord", "load_pickle", "load_torch_zip"]

# torch.save's legacy format starts with this number (torch/serialization.py, MAGIC_NUMBER).
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}  # fmt: skip
_NUMPY_KINDS = ("b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8")
_CONTAINERS = ("ModuleDict", "ModuleList", "Sequential")


@dataclass
class ClassRecord:
    """An object saved by EDM's ``persistent_class``: its class name and ``__dict__`` (``_init_kwargs``,
    ``_parameters``, ``_buffers``, ``_modules``, attributes); the pickled module source is dropped unread."""

    class_name: str
    state: dict = field(repr=False)

    @property
    def init_kwargs(self) -> dict:
        return dict(self.state.get("_init_kwargs") or {})

    def tensors(self, prefix: str = "") -> dict[str, Tensor]:
        """The ``state_dict()`` the object would have: parameters and persistent buffers of it and its submodules."""
        return _tensors(self.state, prefix)


class ModuleRecord:
    """A plain torch container module (``ModuleDict``, ``ModuleList``, ``Sequential``) as its ``__dict__``."""

    state: dict = {}  # replaced (never mutated) by BUILD

    def __setstate__(self, state: dict) -> None:
        self.state = state

    def tensors(self, prefix: str = "") -> dict[str, Tensor]:
        return _tensors(self.state, prefix)


def _tensors(state: dict, prefix: str) -> dict[str, Tensor]:
    """Tensors of a module's ``__dict__``, named as its ``state_dict()`` would; anything else in it is skipped."""
    if not isinstance(state, dict):
        return {}
    skip = state.get("_non_persistent_buffers_set") or set()
    out = {prefix + k: v for k, v in dict(state.get("_parameters") or {}).items() if isinstance(v, Tensor)}
    out.update({prefix + k: v for k, v in dict(state.get("_buffers") or {}).items()
                if isinstance(v, Tensor) and k not in skip})
    for name, child in dict(state.get("_modules") or {}).items():
        if isinstance(child, (ClassRecord, ModuleRecord)):
            out.update(child.tensors(f"{prefix}{name}."))
    return out


def _persistent_record(meta: dict) -> ClassRecord:
    """Stands in for ``torch_utils.persistence._reconstruct_persistent_obj``: keeps the name and state only."""
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
        raise pickle.UnpicklingError("a persistent-object record without a class name")
    return ClassRecord(meta["class_name"], dict(meta.get("state") or {}))


def _rebuild_tensor(storage: Tensor, offset: int, size: tuple, stride: tuple, *_: Any) -> Tensor:
    """Stands in for ``torch._utils._rebuild_tensor_v2``: a strided view of a storage read as a flat tensor."""
    if not isinstance(storage, Tensor):
        raise pickle.UnpicklingError("a tensor whose storage is not raw data")
    return storage.as_strided(tuple(size), tuple(stride), int(offset))


def _rebuild_parameter(data: Tensor, *_: Any) -> Tensor:
    """Stands in for ``torch._utils._rebuild_parameter(_with_state)``: a parameter is loaded as its data."""
    return data


class _NumpyDType:
    """Stands in for ``numpy.dtype``: a numeric type name and, after BUILD, its byte order."""

    def __init__(self, name: str, align: bool = False, copy: bool = False) -> None:
        if name not in _NUMPY_KINDS:
            raise pickle.UnpicklingError(f"numpy dtype {name!r} is not a plain number")
        self.name, self.order = name, "<"

    def __setstate__(self, state: tuple) -> None:
        self.order = state[1] if state[1] in "<>" else "<"


def _numpy_scalar(dtype: _NumpyDType, data: bytes) -> int | float | bool:
    """Stands in for ``numpy.core.multiarray.scalar``: the Python number the bytes encode."""
    if not isinstance(dtype, _NumpyDType):
        raise pickle.UnpicklingError("a numpy scalar of an unknown type")
    return np.frombuffer(data, np.dtype(dtype.name).newbyteorder(dtype.order), count=1)[0].item()


@dataclass
class _StorageRef:
    """A storage named by a persistent id; its data is read after the pickle that names it."""

    dtype: torch.dtype
    key: str
    numel: int


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose globals come only from ``_GLOBALS`` (plus the torch storage types where
    ``storages`` is given) and whose persistent ids are only torch storages; everything else raises
    ``UnpicklingError`` before it runs."""

    def __init__(self, file: io.BufferedIOBase, storages: Callable[[_StorageRef], object] | None = None) -> None:
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _GLOBALS:
            return _GLOBALS[module, name]
        if self.storages is not None and module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise pickle.UnpicklingError(f"the pickle calls {module}.{name}, which is not a tensor, container or "
                                     f"known record")

    def persistent_load(self, pid: Any) -> object:
        if self.storages is None or not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {str(pid)[:60]}")
        dtype, key, numel = pid[1], str(pid[2]), int(pid[4])
        if not isinstance(dtype, torch.dtype) or (len(pid) > 5 and pid[5] is not None):
            raise pickle.UnpicklingError("a storage of an unknown type or a storage view")
        return self.storages(_StorageRef(dtype, key, numel))


def _read_pickle(f: io.BufferedIOBase, storages: Callable[[_StorageRef], object] | None = None) -> Any:
    return RestrictedUnpickler(f, storages).load()


def _storage_from_legacy_bytes(data: bytes) -> Tensor:
    """Stands in for ``torch.storage._load_from_bytes``: a storage saved by legacy ``torch.save`` (magic number,
    protocol, system info, the pickled storage as a persistent id, its key list, then per key an 8-byte element
    count and the raw little-endian data), as a flat tensor."""
    f = io.BytesIO(data)
    if _read_pickle(f) != _LEGACY_MAGIC or _read_pickle(f) != 1001:
        raise pickle.UnpicklingError("a storage that is not in torch's legacy format")
    if not _read_pickle(f).get("little_endian", False):
        raise pickle.UnpicklingError("a big-endian storage")
    refs: dict[str, _StorageRef] = {}
    root = _read_pickle(f, lambda ref: refs.setdefault(ref.key, ref))
    tensors = {}
    for key in _read_pickle(f):
        ref = refs[str(key)]
        numel = int.from_bytes(f.read(8), "little")
        raw = bytearray(f.read(numel * ref.dtype.itemsize))
        if numel != ref.numel or len(raw) != numel * ref.dtype.itemsize:
            raise pickle.UnpicklingError("a truncated storage")
        tensors[ref.key] = torch.frombuffer(raw, dtype=ref.dtype) if numel else torch.empty(0, dtype=ref.dtype)
    if not isinstance(root, _StorageRef) or root.key not in tensors:
        raise pickle.UnpicklingError("a storage blob that holds something else")
    return tensors[root.key]


_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_record,
    ("torch.storage", "_load_from_bytes"): _storage_from_legacy_bytes,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("numpy", "dtype"): _NumpyDType,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    **{("torch.nn.modules.container", name): ModuleRecord for name in _CONTAINERS},
}


def load_pickle(path: str | Path) -> Any:
    """Unpickle ``path`` with ``RestrictedUnpickler``; a refused or unreadable pickle is a one-line UserError."""
    try:
        with open(path, "rb") as f:
            return _read_pickle(f)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, AttributeError, IndexError,
            OverflowError, RuntimeError) as e:
        raise UserError(f"{path}: refused to load ({e}); only tensors, containers and EDM class records are "
                        f"read from a pickle") from None


def load_torch_zip(path: str | Path) -> Any:
    """A ``torch.save`` zip archive (``.pt``/``.bin``) read with ``RestrictedUnpickler``: its ``data.pkl`` with
    storages from the archive's ``data/`` entries."""
    try:
        with zipfile.ZipFile(path) as z:
            pkl = next((n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if pkl is None:
                raise pickle.UnpicklingError("a zip archive without data.pkl")
            root = pkl[: -len("data.pkl")]

            def storage(ref: _StorageRef) -> Tensor:
                name = f"{root}data/{ref.key}"
                if z.getinfo(name).file_size != ref.numel * ref.dtype.itemsize:  # checked before inflating it
                    raise pickle.UnpicklingError("a storage of the wrong size")
                raw = bytearray(z.read(name))
                return torch.frombuffer(raw, dtype=ref.dtype) if ref.numel else torch.empty(0, dtype=ref.dtype)

            with z.open(pkl) as f:
                return _read_pickle(io.BufferedReader(f), storage)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, TypeError, KeyError, AttributeError,
            IndexError, OverflowError, RuntimeError) as e:
        raise UserError(f"{path}: refused to load ({e}); only tensors and containers are read from a torch "
                        f"archive") from None
