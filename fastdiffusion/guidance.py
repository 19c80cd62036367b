"""Class labels and classifier-free guidance (Ho & Salimans 2022) as a denoiser that every sampler runs unchanged.

    D(x; sigma) = D_u + W (D_c - D_u),   D_c = model(x, sigma, y),   D_u = model(x, sigma, 0)

``y`` is the one-hot (N, K) label matrix and the unconditional branch gets the all-zero label: EDM's convention, under
which label dropout trains the unconditional model as the zero label. Both branches run as ONE network call on the
2N-row batch [x; x]; W = 1 is the plain conditional model and makes a single N-row call. The mix is linear in the
model's output, so it is the same for a PSLD model's eps(z, t) (its data estimate is affine in eps).

NFE convention: ``nfe`` counts the sampler's calls of this guided denoiser, as for an unguided model; with W != 1
each call is 2 network evaluations per sample (``network_evaluations``), which protocols and outputs report.
A ``random`` class is a function of the seed alone (``seed_classes``), so image i still depends only on seed i.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .errors import UserError
from .models import ProcessModel

# numpy SeedSequence entropy [CLASS_STREAM, seed]: a stream of its own, so the class draw leaves the noise untouched.
CLASS_STREAM = 0x636C6173

ClassSpec = int | str | Sequence[int] | Tensor | None


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


def network_evaluations(nfe: int, guidance: float | None) -> int:
    """Network evaluations per sample of an ``nfe``-call run: nfe x ``evaluations_per_call(guidance)``."""
    return nfe * evaluations_per_call(guidance)


def guidance_protocol(class_labels: ClassSpec, guidance: float | None, nfe: int) -> dict:
    """What protocols record of a conditional run: the class (K, 'random' or 'per-seed'), W and the network
    evaluations per sample; {} for an unconditional one."""
    if class_labels is None:
        return {}
    w = 1.0 if guidance is None else float(guidance)
    return {"class": class_labels if isinstance(class_labels, int | str) else "per-seed", "guidance": w,
            "network_evaluations": network_evaluations(nfe, w)}


def describe(protocol: dict) -> str:
    """'class 3, guidance 2: 70 network evaluations per sample (2x NFE)' from ``guidance_protocol``; '' if empty."""
    if not protocol:
        return ""
    times = evaluations_per_call(protocol["guidance"])
    return (f"class {protocol['class']}, guidance {protocol['guidance']:g}: {protocol['network_evaluations']} "
            f"network evaluations per sample ({times}x NFE)")


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
    """D(x; sigma) = D_u + W (D_c - D_u) from one network call on [x; x] with labels [y; 0] (W = 1: D_c alone)."""

    def __init__(self, model: Callable, class_labels: Tensor, guidance: float = 1.0) -> None:
        self.model, self.labels, self.guidance = model, class_labels, float(guidance)
        self.both = torch.cat([class_labels, torch.zeros_like(class_labels)])  # [y; 0] for the batch [x; x]

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        """``x`` (N, ...) and ``sigma`` (N,), one noise level per row (as ``CountedModel`` passes them)."""
        if self.labels.device != x.device:
            self.labels, self.both = self.labels.to(x.device), self.both.to(x.device)
        if evaluations_per_call(self.guidance) == 1:
            return self.model(x, sigma, self.labels)
        cond, uncond = self.model(torch.cat([x, x]), torch.cat([sigma, sigma]), self.both).chunk(2)
        return uncond + self.guidance * (cond - uncond)


def guided_model(model: Callable, family: str, class_labels: Tensor | int | None, guidance: float | None,
                 n: int) -> Callable:
    """``model`` itself without labels, else ``Guided(model, y, W)`` once the labels fit the model (W default 1)."""
    if class_labels is None:
        if guidance is not None:
            raise UserError("--guidance needs --class: guidance mixes the conditional and the unconditional model")
        return model
    if family == "dsno":
        raise UserError("--class: a DSNO student generates in one unconditional call; give --class to its teacher "
                        "(sample, or distill trajectories) instead")
    w = 1.0 if guidance is None else float(guidance)
    if not np.isfinite(w) or w < 0:
        raise UserError(f"--guidance must be a finite number >= 0 (1 = plain conditional), got {guidance}")
    return Guided(model, label_matrix(class_labels, n, model_label_dim(model)), w)
