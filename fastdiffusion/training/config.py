"""Training configuration: one dataclass, CLI flags map to its fields one to one, named presets of known setups."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from ..errors import UserError


@dataclass
class TrainConfig:
    run_dir: str = "runs/fdm-digits"
    data: str = "digits16"
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
    precision: str = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU; or fp32 / bf16
    seed: int = 0
    ckpt_every: int = 500
    keep_ckpts: int = 3
    log_every: int = 25
    grid_images: int = 64
    grid_sampler: str = "heun"
    grid_nfe: int = 35
    device: str = "auto"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(obj) - names
        if unknown:
            raise UserError(f"unknown config field(s) {', '.join(sorted(unknown))}")
        obj = dict(obj)
        if "adam_betas" in obj:
            obj["adam_betas"] = tuple(obj["adam_betas"])
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
        if self.precision not in ("auto", "fp32", "bf16"):
            raise UserError(f"--precision must be auto, fp32 or bf16, got '{self.precision}'")


# Settings the resumed run must share with the checkpoint it continues; the rest (steps, logging) may change.
RESUME_KEYS = ("data", "xflip", "process", "process_options", "net", "net_options", "batch", "seed")

PRESETS: dict[str, dict[str, Any]] = {
    # The README's main job: FDM-EDM on 16-px bundled digits, about 4 minutes on a 2-core CPU.
    "demo": {"run_dir": "runs/demo", "data": "digits16", "process": "fdm-edm", "net": "ddpmpp-tiny",
             "batch": 64, "steps": 1500, "lr": 2e-3, "ema_halflife_kimg": 10.0, "ckpt_every": 500},
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
