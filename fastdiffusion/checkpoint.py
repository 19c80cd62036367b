"""Model files and training checkpoints: safetensors weights + JSON, written atomically, loaded without pickle.

Layout of a run directory::

    run/config.json                 resolved training config
    run/log.jsonl                   one JSON line per logged step
    run/ckpt-00001000/              one complete checkpoint (written as ckpt-00001000.tmp-*/ then renamed)
        model.safetensors           raw weights   (metadata: model config JSON)
        ema.safetensors             EMA weights   (metadata: model config JSON) -- what sampling uses
        optimizer.safetensors       optimiser moments and RNG states
        state.json                  step, images seen, optimiser scalars, loss clamp, sha256 of each file above
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .errors import UserError

CKPT_RE = re.compile(r"^ckpt-(\d{8})$")
META_KEY = "fastdiffusion"
FORMAT_VERSION = 1


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync, then rename: readers see the old or the new file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def state_dict_cpu(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}


def save_weights(path: Path, tensors: dict[str, Tensor], meta: dict | None = None) -> None:
    save_file(tensors, str(path), metadata={META_KEY: json.dumps(meta or {})})


def read_weights(path: Path) -> tuple[dict[str, Tensor], dict]:
    """Tensors and the JSON metadata of a safetensors file; a clear UserError if it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such model file")
    try:

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get(META_KEY, "{}"))
        return load_file(str(path)), meta
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable fastdiffusion safetensors file ({e})") from None


def write_checkpoint(run_dir: Path, step: int, files: dict[str, tuple[dict[str, Tensor], dict]],
                     state: dict) -> Path:
    """Write ``files`` (name -> (tensors, metadata)) and ``state.json`` as ``run_dir/ckpt-<step>`` atomically.

    Everything goes to a temporary sibling directory first; its rename is the commit point, so a crash leaves either
    no checkpoint or a complete one (plus a ``*.tmp-*`` directory that ``clean_partial`` removes).
    """
    run_dir = Path(run_dir)
    final = run_dir / f"ckpt-{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=run_dir, prefix=f"{final.name}.tmp-"))
    try:
        checksums = {}
        for name, (tensors, meta) in files.items():
            save_weights(tmp / name, tensors, meta)
            checksums[name] = sha256(tmp / name)
        state = {**state, "format_version": FORMAT_VERSION, "step": step, "sha256": checksums}
        (tmp / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        for p in tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        fsync_dir(run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def verify_checkpoint(ckpt: Path, only: str | None = None) -> dict:
    """The checkpoint's state after checking that every file it lists (or just ``only``) matches its sha256."""
    state_path = ckpt / "state.json"
    try:
        state = json.loads(state_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{state_path}: unreadable checkpoint state ({e})") from None
    for name, digest in state.get("sha256", {}).items():
        if only is not None and name != only:
            continue
        if not (ckpt / name).is_file():
            raise UserError(f"{ckpt / name}: missing from the checkpoint")
        if sha256(ckpt / name) != digest:
            raise UserError(f"{ckpt / name}: checksum mismatch, the file is corrupt")
    return state


def find_run_config(path: Path) -> tuple[Path, dict] | None:
    """The run directory holding config.json in or above a run / checkpoint directory or model file (two levels up
    at most), and its config; None if there is none or it does not read as JSON."""
    for d in [path, *path.parents][:3]:
        if d.is_dir() and (d / "config.json").is_file():
            try:
                return d, json.loads((d / "config.json").read_text())
            except (OSError, json.JSONDecodeError):
                return None
    return None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint directories of ``run_dir``, newest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and CKPT_RE.match(p.name) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: p.name, reverse=True)


def clean_partial(run_dir: Path) -> None:
    """Remove checkpoint directories a crash left half-written."""
    for p in Path(run_dir).glob("ckpt-*.tmp-*"):
        shutil.rmtree(p, ignore_errors=True)


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    for old in list_checkpoints(run_dir)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
