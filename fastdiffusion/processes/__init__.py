"""Forward processes by name: ``edm``, ``vp``, ``ve``, the momentum variants ``fdm-edm``, ``fdm-vp``, ``fdm-ve``,
``psld`` (phase space Langevin diffusion on the augmented state (x, m)) and ``discrete-vp`` (a DDPM network's
discrete schedule, for imported epsilon / v / x_0 networks)."""

from __future__ import annotations

from typing import Any

from ..errors import UserError
from .base import Precond, Process
from .discrete_vp import DiscreteVP
from .edm import EDM, VE, VP
from .fdm import FDM
from .psld import PSLD

BASES = {"edm": EDM, "vp": VP, "ve": VE}
# FDM's loss warm-up lengths of the reference CIFAR-10 configs, per base process.
FDM_WARMUP = {"edm": 200, "vp": 400, "ve": 400}
FDM_FIELDS = ("multiplier", "warmup_ite", "fdm_beta_min", "fdm_beta_d")
PROCESS_NAMES = (*BASES, *(f"fdm-{b}" for b in BASES), "psld", "discrete-vp")
OTHERS = {"psld": PSLD, "discrete-vp": DiscreteVP}


def make_process(name: str, **kwargs: Any) -> Process:
    """Build a process by name; ``kwargs`` override its constants (FDM ones: multiplier, warmup_ite, ...)."""
    if name in OTHERS:
        try:
            return OTHERS[name](**kwargs)
        except TypeError as e:
            raise UserError(f"bad option for process '{name}': {e}") from None
    fdm = name.startswith("fdm-")
    base_name = name.removeprefix("fdm-")
    if base_name not in BASES:
        raise UserError(f"unknown process '{name}': choose one of {', '.join(PROCESS_NAMES)}")
    fdm_kwargs = {k: kwargs.pop(k) for k in FDM_FIELDS if k in kwargs}
    if fdm_kwargs and not fdm:
        raise UserError(f"process '{name}' takes no FDM option ({', '.join(fdm_kwargs)}): use fdm-{name}")
    try:
        base = BASES[base_name](**kwargs)
        if not fdm:
            return base
        fdm_kwargs.setdefault("warmup_ite", FDM_WARMUP[base_name])
        return FDM(base, **fdm_kwargs)
    except TypeError as e:
        raise UserError(f"bad option for process '{name}': {e}") from None


def process_from_config(cfg: dict) -> Process:
    """Inverse of ``Process.config()``."""
    cfg = dict(cfg)
    return make_process(cfg.pop("name"), **cfg)


__all__ = ["EDM", "FDM", "PROCESS_NAMES", "PSLD", "DiscreteVP", "Precond", "Process", "VE", "VP", "make_process",
           "process_from_config"]
