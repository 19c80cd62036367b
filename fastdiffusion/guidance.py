"""Class labels and classifier-free guidance (Ho & Salimans 2022) as a denoiser that every sampler runs unchanged.

    D(x; sigma) = D_u + W (D_c - D_u),   D_c = model(x, sigma, y),   D_u = model(x, sigma, 0)

``y`` is the one-hot (N, K) label matrix and the unconditional branch gets the all-zero label: EDM's convention, under
which label dropout trains the unconditional model as the zero label. Both branches run as ONE network call on the
2N-row batch [x; x]; W = 1 is the plain conditional model and makes a single N-row call. The mix is linear in the
model's output, so it is the same for a PSLD model's eps(z, t) (its data estimate is affine in eps).

Limited-interval guidance (Kynkaanniemi et al. 2024): with ``interval`` (lo, hi] the mix applies only to the calls
whose noise level lies in it; every other call is D_c alone, one N-row network call.

NFE convention: ``nfe`` counts the sampler's calls of this guided denoiser, as for an unguided model; with W != 1
each guided call is 2 network evaluations per sample (``network_evaluations``), which protocols and outputs report.
A ``random`` class is a function of the seed alone (``seed_classes``), so image i still depends only on seed i.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .errors import UserError
from .models import ProcessModel

# numpy SeedSequence entropy [CLASS_STREAM, seed]: a stream of its own, so the class draw leaves the noise untouched.
CLASS_STREAM = 0x636C6173

ClassSpec = int | str | Sequence[int] | Tensor | None
Interval = tuple[float, float]


def parse_class(text: str | None) -> int | str | None:
    """``--class K|random`` -> K or 'random' (None stays None)."""
    if text is None or text == "random":
        return text
    try:
        return int(text)
    except ValueError:
        raise UserError(f"--class {text}: give a class number (0 .. K-1) or 'random'") from None


def evaluations_per_call(guidance: float | None) -> int:
    """Network evaluations per sample in one guided denoiser call: 1 for W = 1 or no guidance, else 2."""
    return 1 if guidance is None or guidance == 1 else 2


def parse_interval(text: str | None) -> Interval | None:
    """``--guidance-interval LO,HI`` -> (LO, HI), checked by ``check_interval`` (None stays None)."""
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--guidance-interval {text}: give two noise levels LO,HI, e.g. 0.3,5") from None
    return check_interval((lo, hi))


def check_interval(interval: Sequence[float]) -> Interval:
    """(lo, hi) as floats, after checking 0 <= lo < hi (hi may be inf)."""
    lo, hi = (float(v) for v in interval)
    if not (math.isfinite(lo) and lo >= 0 and hi > lo):
        raise UserError(f"--guidance-interval {lo:g},{hi:g}: give noise levels 0 <= LO < HI")
    return lo, hi


def in_interval(sigma: Tensor | float, interval: Interval | None) -> Tensor | bool:
    """lo < sigma <= hi: where the guidance applies (everywhere without an interval)."""
    return True if interval is None else (sigma > interval[0]) & (sigma <= interval[1])


def network_evaluations(nfe: int, guidance: float | None, interval: Interval | None = None,
                        levels: Sequence[float] | None = None) -> int:
    """Network evaluations per sample of an ``nfe``-call run: nfe x ``evaluations_per_call(guidance)``; with an
    interval, that for each of the run's call ``levels`` in it and 1 for the others."""
    if interval is None:
        return nfe * evaluations_per_call(guidance)
    if levels is None or len(levels) != nfe:
        raise ValueError(f"an interval-guided run needs the noise levels of its {nfe} calls")
    return sum(evaluations_per_call(guidance) if in_interval(s, interval) else 1 for s in levels)


def guidance_protocol(class_labels: ClassSpec, guidance: float | None, nfe: int, interval: Interval | None = None,
                      levels: Sequence[float] | None = None) -> dict:
    """What protocols record of a conditional run: the class (K, 'random' or 'per-seed'), W, its interval if any and
    the network evaluations per sample (``network_evaluations``); {} for an unconditional one."""
    if class_labels is None:
        return {}
    w = 1.0 if guidance is None else float(guidance)
    return {"class": class_labels if isinstance(class_labels, int | str) else "per-seed", "guidance": w,
            **({"guidance_interval": list(interval)} if interval is not None else {}),
            "network_evaluations": network_evaluations(nfe, w, interval, levels)}


def describe(protocol: dict) -> str:
    """'class 3, guidance 2: 70 network evaluations per sample (2x NFE)' from ``guidance_protocol`` ('guidance 2 on
    sigma in (0.3, 5]: 48 network evaluations per sample' with an interval); '' if empty."""
    if not protocol:
        return ""
    evals = protocol["network_evaluations"]
    if "guidance_interval" in protocol:
        lo, hi = protocol["guidance_interval"]
        return (f"class {protocol['class']}, guidance {protocol['guidance']:g} on sigma in ({lo:g}, {hi:g}]: "
                f"{evals} network evaluations per sample")
    return (f"class {protocol['class']}, guidance {protocol['guidance']:g}: {evals} network evaluations per sample "
            f"({evaluations_per_call(protocol['guidance'])}x NFE)")


def model_label_dim(model: Callable) -> int | None:
    """K, the number of classes a ``ProcessModel``'s network takes (0: unconditional); None for a bare callable."""
    return int(model.net_config.get("label_dim", 0)) if isinstance(model, ProcessModel) else None


def seed_classes(seeds: Sequence[int], label_dim: int) -> Tensor:
    """class_i = numpy ``default_rng([CLASS_STREAM, seeds[i]]).integers(label_dim)``: (N,) int64, a function of the
    seed alone."""
    return torch.tensor([int(np.random.default_rng([CLASS_STREAM, int(s)]).integers(label_dim)) for s in seeds],
                        dtype=torch.int64)


def classes_for_seeds(class_labels: ClassSpec, seeds: Sequence[int], label_dim: int | None) -> Tensor | None:
    """Per-seed labels from K (every seed), 'random' (``seed_classes``) or one label per seed; None stays None."""
    if class_labels is None:
        return None
    if isinstance(class_labels, str):
        if class_labels != "random":
            return classes_for_seeds(parse_class(class_labels), seeds, label_dim)
        _check_conditional(label_dim)
        if label_dim is None:
            raise UserError("class_labels='random': a bare callable does not say its number of classes; pass one "
                            "label per seed")
        return seed_classes(seeds, label_dim)
    if isinstance(class_labels, int):
        return torch.full((len(seeds),), class_labels, dtype=torch.int64)
    labels = torch.as_tensor(class_labels)
    if labels.shape[0] != len(seeds):
        raise UserError(f"class_labels has {labels.shape[0]} rows for {len(seeds)} seeds: give one per seed")
    return labels


def _check_conditional(label_dim: int | None) -> None:
    if label_dim == 0:
        raise UserError("--class: this model is unconditional (its network has label_dim 0); drop --class and "
                        "--guidance, or train a conditional model (train --cond)")


def label_matrix(class_labels: Tensor | int, n: int, label_dim: int | None) -> Tensor:
    """(N,) integer classes, one class for all N, or (N, K) one-hot / soft labels -> the (N, K) float32 matrix y."""
    _check_conditional(label_dim)
    labels = torch.as_tensor(class_labels)
    if labels.ndim == 0:
        labels = labels.expand(n)
    if labels.shape[0] != n:
        raise UserError(f"class_labels has {labels.shape[0]} rows for a batch of {n}")
    if labels.ndim == 2 and labels.is_floating_point():
        if label_dim is not None and labels.shape[1] != label_dim:
            raise UserError(f"class_labels has {labels.shape[1]} columns; this model has {label_dim} classes")
        return labels.float()
    if labels.ndim != 1 or labels.is_floating_point():
        raise UserError(f"class_labels must be (N,) integer classes or (N, K) one-hot rows, got "
                        f"{tuple(labels.shape)} {labels.dtype}")
    if label_dim is None:
        raise UserError("integer class_labels: a bare callable does not say its number of classes; pass one-hot "
                        "rows (N, K)")
    bad = labels[(labels < 0) | (labels >= label_dim)]
    if len(bad):
        raise UserError(f"--class {int(bad[0])}: this model has {label_dim} classes, 0 .. {label_dim - 1}")
    return torch.nn.functional.one_hot(labels.long(), label_dim).float()


class Guided:
    """D(x; sigma) = D_u + W (D_c - D_u) from one network call on [x; x] with labels [y; 0] (W = 1: D_c alone); with
    ``interval`` (lo, hi], D_c alone from one N-row call wherever no row's sigma lies in it."""

    def __init__(self, model: Callable, class_labels: Tensor, guidance: float = 1.0,
                 interval: Interval | None = None) -> None:
        self.model, self.labels, self.guidance, self.interval = model, class_labels, float(guidance), interval
        self.both = torch.cat([class_labels, torch.zeros_like(class_labels)])  # [y; 0] for the batch [x; x]

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        """``x`` (N, ...) and ``sigma`` (N,), one noise level per row (as ``CountedModel`` passes them)."""
        if self.labels.device != x.device:
            self.labels, self.both = self.labels.to(x.device), self.both.to(x.device)
        inside = in_interval(sigma, self.interval)
        if evaluations_per_call(self.guidance) == 1 or self.interval is not None and not bool(inside.any()):
            return self.model(x, sigma, self.labels)
        cond, uncond = self.model(torch.cat([x, x]), torch.cat([sigma, sigma]), self.both).chunk(2)
        guided = uncond + self.guidance * (cond - uncond)
        return guided if self.interval is None else torch.where(inside.view(-1, *[1] * (x.ndim - 1)), guided, cond)


def guided_model(model: Callable, family: str, class_labels: Tensor | int | None, guidance: float | None,
                 n: int, interval: Interval | None = None) -> Callable:
    """``model`` itself without labels, else ``Guided(model, y, W, interval)`` once the labels fit the model (W
    default 1)."""
    if class_labels is None:
        if guidance is not None or interval is not None:
            what = "--guidance" if guidance is not None else "--guidance-interval"
            raise UserError(f"{what} needs --class: guidance mixes the conditional and the unconditional model")
        return model
    if family == "dsno":
        raise UserError("--class: a DSNO student generates in one unconditional call; give --class to its teacher "
                        "(sample, or distill trajectories) instead")
    if family != "edm" and interval is not None:
        raise UserError(f"--guidance-interval is a range of noise levels sigma: it needs an EDM-family model, not a "
                        f"{family} one")
    w = 1.0 if guidance is None else float(guidance)
    if not np.isfinite(w) or w < 0:
        raise UserError(f"--guidance must be a finite number >= 0 (1 = plain conditional), got {guidance}")
    return Guided(model, label_matrix(class_labels, n, model_label_dim(model)), w,
                  None if interval is None else check_interval(interval))
