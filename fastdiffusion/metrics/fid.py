"""FID with the standard 2015-12-05 Inception-v3 (TF graph ported to PyTorch), via torch-fidelity, fully offline.

    FID = FD( N(μ_g, Σ_g), N(μ_r, Σ_r) )   (`frechet.frechet_distance`)

with (μ, Σ) the float64 mean and covariance of the 2048-d pool3 features of torch-fidelity's
`FeatureExtractorInceptionV3` (feature '2048'; it resizes to 299×299 with TF-1.x-compatible bilinear interpolation
internally). Images go in as the uint8 PNG round-trip of the [−1, 1] floats, u8 = round(127.5 (clamp(x) + 1)), so
saved sample files and in-memory samples give the same features; grayscale is repeated to 3 channels.

The weights are never downloaded: pass the local file `weights-inception-2015-12-05-6726825d.pth` (from the
torch-fidelity GitHub release v0.2.0) with `inception=PATH` / `--inception PATH` or the environment variable
FASTDIFFUSION_INCEPTION (a file, or a folder holding it); without either, the copy torch-fidelity's own download
keeps in torch.hub's cache (`$TORCH_HOME/hub/checkpoints/`, by default `~/.cache/torch/hub/checkpoints/`) is used if
it is there. Its sha256 is recorded as the feature network's hash.
torch-fidelity is an optional dependency: `pip install 'fastdiffusion[fid]'`.

Reference statistics come from a precomputed .npz (arrays mu and sigma: ours, EDM's fid-refs or pytorch-fid's) or
from images (a bundled name, folder, .zip or .npz of images, read by `fastdiffusion.data`). Feature extraction is
sharded across torchrun ranks: `image_stats` all-reduces the float64 sums, `image_features` gathers the features
(for KID, `kid.py`, which needs them all).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

from ..checkpoint import sha256
from ..errors import UserError
from .frechet import FeatureStats, GaussianStats

__all__ = [
    "FEATURE_NETWORK",
    "INCEPTION_ENV",
    "INCEPTION_FILE",
    "INCEPTION_URL",
    "fid",
    "fid_from_stats",
    "image_features",
    "image_stats",
    "inception_cache_file",
    "load_inception",
    "resolve_inception",
    "to_uint8_rgb",
]

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
INCEPTION_ENV = "FASTDIFFUSION_INCEPTION"
FEATURE_NETWORK = "inception-v3-2015-12-05 pool3 (2048-d, torch-fidelity FeatureExtractorInceptionV3)"

_WHERE = f"download it once from the torch-fidelity GitHub release ({INCEPTION_URL})"


def inception_cache_file() -> Path:
    """Where torch-fidelity's download keeps the weights: torch.hub's checkpoints folder (``torch.hub.get_dir()``, by
    default ~/.cache/torch/hub) / INCEPTION_FILE."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def resolve_inception(path: str | Path | None = None) -> Path:
    """The Inception weights file: `path`, else $FASTDIFFUSION_INCEPTION, else torch-fidelity's cached copy if present;
    a folder is searched for INCEPTION_FILE."""
    given = path if path is not None else os.environ.get(INCEPTION_ENV) or None
    if given is None and inception_cache_file().is_file():
        return inception_cache_file()
    if given is None:
        raise UserError(
            f"FID needs the Inception weights file {INCEPTION_FILE}, not found in torch-fidelity's cache "
            f"{inception_cache_file().parent}: {_WHERE} and pass it with --inception PATH or set {INCEPTION_ENV}"
        )
    p = Path(given).expanduser()
    if p.is_dir():
        p = p / INCEPTION_FILE
    if not p.is_file():
        raise UserError(f"{p}: Inception weights file not found; FID needs {INCEPTION_FILE}: {_WHERE}")
    return p


@lru_cache(maxsize=4)
def _file_hash(path: str, size: int, mtime: float) -> str:
    return sha256(Path(path))


def load_inception(path: str | Path | None = None, device: str | torch.device = "cpu") -> tuple[Callable, dict]:
    """torch-fidelity's Inception-v3 with the local weights, on `device`, plus its protocol info (network, sha256).

    The extractor maps uint8 (N, 3, H, W) to float32 (N, 2048).
    """
    file = resolve_inception(path)
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as err:
        raise UserError(
            f"FID needs the torch-fidelity package (pip install 'fastdiffusion[fid]', i.e. torch-fidelity>=0.3) "
            f"with the weights file {INCEPTION_FILE} ({file}); import failed: {err}"
        ) from None
    try:
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(file))
    except Exception as err:
        raise UserError(
            f"{file}: not a usable {INCEPTION_FILE} ({type(err).__name__}: {' '.join(str(err).split())[:300]}); "
            f"{_WHERE}"
        ) from None
    net = net.to(device).eval()
    stat = file.stat()
    info = {"feature_network": FEATURE_NETWORK, "feature_network_sha256": _file_hash(str(file), stat.st_size,
                                                                                     stat.st_mtime),
            "feature_network_file": str(file)}

    def extract(u8: Tensor) -> Tensor:
        with torch.no_grad():
            return net(u8)[0]

    return extract, info


def to_uint8_rgb(x: Tensor) -> Tensor:
    """[−1, 1] float (N, C, H, W) → uint8 (N, 3, H, W): round(127.5 (clamp(x, −1, 1) + 1)), gray repeated ×3."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise UserError(f"FID needs images (N, 1 or 3, H, W), got shape {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def image_stats(
    x: Tensor, extractor: Callable[[Tensor], Tensor], batch: int = 200, device: str | torch.device = "cpu"
) -> GaussianStats:
    """Float64 feature statistics of images x (N, C, H, W) in [−1, 1] (or uint8).

    Under torchrun each rank extracts rows rank::world and the sums are all-reduced, so every rank returns the
    statistics of all N images.
    """
    stats = FeatureStats()
    for features in _rank_features(x, extractor, batch, device):
        stats.update(features.to(torch.float64))
    if stats.dim is None:  # this rank got no rows: learn the dimension from one image (not counted)
        stats.dim = int(extractor(to_uint8_rgb(x[:1]).to(device)).shape[1])
    stats.all_reduce(device if torch.device(device).type == "cuda" else None)
    return stats.stats()


def _rank_features(x: Tensor, extractor: Callable[[Tensor], Tensor], batch: int, device: str | torch.device
                   ) -> Iterator[Tensor]:
    """The features of this torchrun rank's rows x[rank::world] (all rows outside torchrun), `batch` at a time."""
    from ..training.distributed import rank_world

    rank, world = rank_world()
    mine = x[rank::world]
    for lo in range(0, mine.shape[0], batch):
        yield extractor(to_uint8_rgb(mine[lo : lo + batch]).to(device))


def image_features(
    x: Tensor, extractor: Callable[[Tensor], Tensor], batch: int = 200, device: str | torch.device = "cpu"
) -> Tensor:
    """Float32 features (N, D) of images x (N, C, H, W) in [−1, 1] (or uint8), on the CPU, in row order.

    Under torchrun each rank extracts rows rank::world and every rank gets all N rows back (all_gather).
    """
    import torch.distributed as dist

    from ..training.distributed import rank_world

    parts = [f.float().cpu() for f in _rank_features(x, extractor, batch, device)]
    local = torch.cat(parts) if parts else torch.empty(0, 0)
    rank, world = rank_world()
    if world == 1:
        return local
    gathered: list[Tensor] = [None] * world  # type: ignore[list-item]
    dist.all_gather_object(gathered, local)
    dim = max(part.shape[1] for part in gathered)
    out = torch.empty(x.shape[0], dim)
    for r, part in enumerate(gathered):
        if len(part):  # a rank with no rows sent a (0, 0) tensor
            out[r::world] = part
    return out


def fid_from_stats(gen: GaussianStats, ref: GaussianStats, info: dict) -> dict:
    """FID between generated and reference statistics made by the feature network `info` describes, after checking
    that both come from the same network. Returns {'value', **info, 'n_generated', 'n_reference'}."""
    if ref.mu.shape != gen.mu.shape:
        raise UserError(
            f"FID: reference statistics are {ref.mu.shape[0]}-d but the feature network gives {gen.mu.shape[0]}-d "
            f"features; use statistics made with the same network"
        )
    ref_hash = ref.meta.get("feature_network_sha256")
    if ref_hash and info.get("feature_network_sha256") and ref_hash != info["feature_network_sha256"]:
        raise UserError(
            f"FID: reference statistics were made with feature network {ref_hash[:12]}…, not the given "
            f"{info['feature_network_sha256'][:12]}…; recompute them"
        )
    return {"value": gen.frechet_distance(ref), **info, "n_generated": gen.n, "n_reference": ref.n}


def fid(
    samples: Tensor,
    reference: GaussianStats | Tensor,
    *,
    inception: str | Path | None = None,
    extractor: Callable[[Tensor], Tensor] | None = None,
    info: dict | None = None,
    batch: int = 200,
    device: str | torch.device = "cpu",
) -> dict:
    """FID of `samples` (images in [−1, 1]) against `reference` (statistics or images).

    `extractor`/`info` replace the Inception network (e.g. a stand-in in tests); by default it is loaded from
    `inception` / $FASTDIFFUSION_INCEPTION. Returns {'value', 'feature_network', 'feature_network_sha256',
    'n_generated', 'n_reference'}.
    """
    if extractor is None:
        extractor, info = load_inception(inception, device)
    info = dict(info or {"feature_network": "custom", "feature_network_sha256": None})
    gen = image_stats(samples, extractor, batch, device)
    ref = reference if isinstance(reference, GaussianStats) else image_stats(reference, extractor, batch, device)
    return fid_from_stats(gen, ref, info)
