"""Training configuration: one dataclass, CLI flags map to its fields one to one, named presets of known setups."""

from __future__ import annotations

import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from ..errors import UserError


def _checked(name: str, value: Any, tp: Any) -> Any:
    """``value`` converted to the field type ``tp`` (int, float, str, bool, dict, a float pair, or X | None)."""
    args = typing.get_args(tp)
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
    origin = typing.get_origin(tp) or tp
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
        str: isinstance(value, str),
        dict: isinstance(value, dict),
        tuple: isinstance(value, (list, tuple)) and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value),
    }[origin]
    if not ok:
        raise UserError(f"config field '{name}' must be {getattr(tp, '__name__', tp)}, got {value!r}")
    return tuple(value) if origin is tuple else float(value) if origin is float else value


@dataclass
class TrainConfig:
    run_dir: str = "runs/fdm-digits"
    data: str = "digits16"
    data_split: str = "all"  # all | train | test: hold the test split out when it is the evaluation reference
    xflip: bool = False
    process: str = "fdm-edm"
    process_options: dict[str, float] = field(default_factory=dict)  # e.g. {"multiplier": 2.0, "warmup_ite": 200}
    net: str = "ddpmpp-tiny"
    net_options: dict[str, Any] = field(default_factory=dict)  # overrides of the preset, e.g. {"dropout": 0.1}
    batch: int = 64  # global batch (all GPUs, all accumulation rounds)
    accum: int = 1  # gradient accumulation rounds per step
    steps: int = 2000
    lr: float = 1e-3
    lr_warmup: int = 100  # steps of linear learning-rate warm-up
    adam_betas: tuple[float, float] = (0.9, 0.999)
    ema_halflife_kimg: float = 500.0
    ema_rampup: float | None = 0.05
    grad_clip: float | None = None  # max global gradient norm; None = off
    fault_limit: int = 5  # skipped non-finite steps, with no clean log interval between, that trigger on_faults
    on_faults: str = "rollback"  # rollback (to the newest checkpoint, lr halved) or abort
    max_rollbacks: int = 3
    precision: str = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU; or fp32 / bf16
    channels_last: bool | None = None  # None = on for image networks on CUDA
    compile: bool | None = None  # torch.compile the training step's model; None = on for CUDA
    compile_options: dict[str, Any] = field(default_factory=dict)  # Inductor options, e.g. {"max_autotune": true}
    cudnn_benchmark: bool | None = None  # cuDNN autotuning of convolution algorithms; None = on for CUDA
    ddp_bucket_mb: float | None = None  # DDP gradient bucket size (None = torch's 25 MB)
    seed: int = 0
    ckpt_every: int = 500
    keep_ckpts: int = 3
    log_every: int = 25
    grid_images: int = 64
    grid_sampler: str | None = None  # None = the process family's default (heun 35 NFE for EDM, sscs for PSLD)
    grid_nfe: int | None = None
    device: str = "auto"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(obj) - names
        if unknown:
            raise UserError(f"unknown config field(s) {', '.join(sorted(unknown))}")
        hints = typing.get_type_hints(cls)
        obj = {k: _checked(k, v, hints[k]) for k, v in obj.items()}
        return cls(**obj)

    def validate(self) -> None:
        if self.batch < 1 or self.accum < 1 or self.batch % self.accum:
            raise UserError(f"--batch {self.batch} must be a positive multiple of --accum {self.accum}")
        if self.steps < 1:
            raise UserError(f"--steps must be >= 1, got {self.steps}")
        if not self.lr > 0:
            raise UserError(f"--lr must be > 0, got {self.lr}")
        if self.ckpt_every < 1 or self.log_every < 1:
            raise UserError("--ckpt-every and --log-every must be >= 1")
        if self.on_faults not in ("rollback", "abort"):
            raise UserError(f"--on-faults must be rollback or abort, got '{self.on_faults}'")
        if self.fault_limit < 1 or self.max_rollbacks < 0:
            raise UserError("--fault-limit must be >= 1 and --max-rollbacks >= 0")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise UserError(f"--precision must be auto, fp32 or bf16, got '{self.precision}'")
        if self.ddp_bucket_mb is not None and not self.ddp_bucket_mb > 0:
            raise UserError(f"--ddp-bucket-mb must be > 0, got {self.ddp_bucket_mb}")


# Settings the resumed run must share with the checkpoint it continues; the rest (steps, logging) may change.
RESUME_KEYS = ("data", "data_split", "xflip", "process", "process_options", "net", "net_options", "batch", "seed")

PRESETS: dict[str, dict[str, Any]] = {
    # The README's main job: FDM-EDM on 16-px bundled digits, sized for a 2-core CPU.
    "demo": {"run_dir": "runs/demo", "data": "digits16", "process": "fdm-edm", "net": "ddpmpp-tiny",
             "batch": 64, "steps": 1200, "lr": 2e-3, "ema_halflife_kimg": 10.0, "ckpt_every": 400},
    # EDM's CIFAR-10 DDPM++ setup (batch 512, lr 1e-3, 10 Mimg warm-up) on 32-px digits for GPUs.
    "edm-cifar10": {"net": "ddpmpp-cifar10", "process": "edm", "batch": 512, "lr": 1e-3, "lr_warmup": 19531,
                    "ema_halflife_kimg": 500.0, "xflip": False},
    "fdm-edm-cifar10": {"net": "ddpmpp-cifar10", "process": "fdm-edm", "batch": 512, "lr": 1e-3,
                        "lr_warmup": 19531, "process_options": {"multiplier": 2.0, "warmup_ite": 200}},
}


def preset(name: str, **overrides: Any) -> TrainConfig:
    if name not in PRESETS:
        raise UserError(f"unknown preset '{name}': choose one of {', '.join(PRESETS)}")
    return replace(TrainConfig(**PRESETS[name]), **overrides)
