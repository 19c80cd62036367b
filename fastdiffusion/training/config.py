"""Training configuration: one dataclass, CLI flags map to its fields one to one (each field's ``help`` is its flag's
``--help`` line), named presets of known setups, and the configuration a ``--resume`` continues."""

from __future__ import annotations

import json
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..cli_args import check_device
from ..data import BUNDLED
from ..data.images import SPLITS
from ..errors import UserError
from ..nets import ARCHS
from ..nets import PRESETS as NET_PRESETS
from ..processes import PROCESS_NAMES, make_process
from .logger import LOGGERS, check_logger


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


def setting(default: Any, help: str) -> Any:
    """A config field with its one-line ``--help`` text (a dict default is copied for every instance)."""
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


DEFAULT_LABEL_DROPOUT = 0.1  # EDM's --cond default probability of training with the label dropped


@dataclass
class TrainConfig:
    run_dir: str = setting("runs/fdm-digits", "directory of the run: config.json, log.jsonl, checkpoints, sample grids")
    data: str = setting("digits16", f"training data: a bundled set ({', '.join(BUNDLED)}) or a folder of images, "
                        f"a .zip (e.g. from `fastdiffusion dataset`) or a .npz/.npy array (FILE.npz:KEY picks one)")
    data_split: str = setting("all", f"part of the data to train on: {' | '.join(SPLITS)} (a fixed 80/20 split; "
                              f"train keeps the test part out for evaluation)")
    xflip: bool = setting(False, "random horizontal flips, on the device")
    cond: bool = setting(False, "class-conditional training on the data's labels (bundled digits, dataset.json, "
                         "class folders, an npz 'labels' array); sets the network's label_dim")
    label_dropout: float | None = setting(None, "with --cond: probability of training an example with its label "
                                          f"dropped, for classifier-free guidance (default: {DEFAULT_LABEL_DROPOUT})")
    process: str = setting("fdm-edm", f"forward process: {', '.join(PROCESS_NAMES)}")
    process_options: dict[str, float | str] = setting({}, "process constant KEY=VALUE, repeatable: e.g. multiplier=2, "
                                                      "warmup_ite=200 (fdm-*), P_mean=-1.2 (edm), loss=dsm (psld)")
    net: str = setting("ddpmpp-tiny", f"network: a preset ({', '.join(NET_PRESETS)}) or an architecture "
                       f"({', '.join(ARCHS)})")
    net_options: dict[str, Any] = setting({}, "network option KEY=VALUE over the preset's, repeatable: e.g. "
                                          "dropout=0.1, model_channels=64 (`fastdiffusion info --net NAME`)")
    init_from: str | None = setting(None, "start from this model's EMA weights (fine-tuning): a run directory, "
                                    "checkpoint directory or .safetensors file with the same network (default: none)")
    batch: int = setting(64, "global batch: all GPUs and all accumulation rounds together")
    accum: int = setting(1, "gradient accumulation rounds per step (the same updates, less memory)")
    steps: int = setting(2000, "optimiser steps to train to (counted from the start of the run)")
    lr: float = setting(1e-3, "Adam learning rate after warm-up")
    lr_warmup: int = setting(100, "steps of linear learning-rate warm-up")
    adam_betas: tuple[float, float] = setting((0.9, 0.999), "Adam's beta1 beta2")
    ema_halflife_kimg: float = setting(500.0, "EMA half-life in thousands of training images")
    ema_rampup: float | None = setting(0.05, "EMA half-life at most this fraction of the images seen (None: no "
                                       "ramp-up)")
    grad_clip: float | None = setting(None, "clip the global gradient norm to this value (default: off)")
    fault_limit: int = setting(5, "non-finite steps in a row (they are skipped) that trigger --on-faults")
    on_faults: str = setting("rollback", "rollback (to the newest checkpoint with half the learning rate) | abort")
    max_rollbacks: int = setting(3, "roll-backs before the run stops")
    precision: str = setting("auto", "auto (bf16 autocast on GPUs of compute capability 8.0 or later, else fp32) | "
                             "fp32 | bf16")
    channels_last: bool | None = setting(None, "channels_last memory layout (default: on for image networks on CUDA)")
    compile: bool | None = setting(None, "torch.compile the training step's model (default: on a GPU of compute "
                                   "capability 7.0 or later once a timed eager step shows the run's remaining "
                                   "steps pay for the compile time; see fastdiffusion.fastpath)")
    compile_options: dict[str, Any] = setting({}, "Inductor option KEY=VALUE for --compile, repeatable: e.g. "
                                              "max_autotune=true")
    cudnn_benchmark: bool | None = setting(None, "cuDNN autotuning of convolution algorithms (default: on for CUDA)")
    ddp_bucket_mb: float | None = setting(None, "DDP gradient bucket size in MB (default: torch's 25)")
    loader_workers: int | None = setting(None, "DataLoader processes per rank reading ahead (default: 0 for arrays "
                                         "in memory or memory-mapped, up to 8 for folders and zips)")
    seed: int = setting(0, "seed of the initial weights and of every random draw of training")
    ckpt_every: int = setting(500, "steps between checkpoints (each with a sample grid samples-NNNNNNNN.png)")
    keep_ckpts: int = setting(3, "newest checkpoints kept")
    log_every: int = setting(25, "steps between log rows")
    logger: str = setting("jsonl", f"{' | '.join(LOGGERS)}: log.jsonl always; tensorboard also writes "
                          f"RUN_DIR/tensorboard (pip install 'fastdiffusion[tensorboard]')")
    grid_images: int = setting(64, "images in each checkpoint's sample grid (seeds 0..N-1)")
    grid_sampler: str | None = setting(None, "sampler of the grid (default: the process family's, heun "
                                       "35 NFE for EDM, sscs for PSLD)")
    grid_nfe: int | None = setting(None, "network calls per grid sample (default: the sampler's)")
    device: str = setting("auto", "auto (CUDA if present) | cpu | cuda | cuda:N")

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
        if self.data_split not in SPLITS:
            raise UserError(f"--data-split must be one of {', '.join(SPLITS)}, got '{self.data_split}'")
        if self.loader_workers is not None and self.loader_workers < 0:
            raise UserError(f"--loader-workers must be >= 0, got {self.loader_workers}")
        check_logger(self.logger)
        check_device(self.device)
        self._validate_labels()
        _check_process_options(self.process, self.process_options)

    def _validate_labels(self) -> None:
        for key, flag in (("label_dim", "--cond"), ("label_dropout", "--label-dropout")):
            if key in self.net_options and not (key == "label_dim" and self.cond):
                raise UserError(f"--net-opt {key}={self.net_options[key]}: set it with {flag} instead "
                                + ("(labels from the data, label_dim from their classes)" if key == "label_dim"
                                   else "(drawn for the global batch, like every random draw of a step)"))
        if self.label_dropout is not None:
            if not self.cond:
                raise UserError("--label-dropout applies to conditional training: add --cond")
            if not 0 <= self.label_dropout < 1:
                raise UserError(f"--label-dropout must be in [0, 1), got {self.label_dropout}")


def _check_process_options(name: str, options: dict[str, Any]) -> None:
    """Each ``--process-opt`` must be an option of the process with a value of its default's kind."""
    make_process(name, **options)  # unknown names and options
    defaults = make_process(name).config()
    for key, value in options.items():
        want = defaults.get(key)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if isinstance(want, (int, float)) and not isinstance(want, bool) and not number:
            raise UserError(f"--process-opt {key}={value}: process '{name}' option {key} takes a number "
                            f"(default {want})")
        if isinstance(want, str) and not isinstance(value, str):
            raise UserError(f"--process-opt {key}={value}: process '{name}' option {key} takes a name "
                            f"(default {want!r})")


# Settings the resumed run must share with the checkpoint it continues; the rest (steps, logging) may change.
RESUME_KEYS = ("data", "data_split", "xflip", "cond", "process", "process_options", "net", "net_options", "batch",
               "seed")


@dataclass(frozen=True)
class Preset:
    """A named setup: what it trains (``about``), its settings, and the data it needs when none is bundled."""

    about: str
    config: dict[str, Any]
    needs_data: str | None = None  # what --data must be; None: the config names a bundled set


# The EDM CIFAR-10 setup (Karras et al. 2022, DDPM++ config F): batch 512, lr 1e-3 after a 10 Mimg warm-up, EMA
# half-life 500 kimg, 200 Mimg in all (EDM also uses its non-leaking augmentation, not implemented here).
_EDM_CIFAR10 = {"net": "ddpmpp-cifar10", "batch": 512, "lr": 1e-3, "lr_warmup": 19531, "steps": 390625,
                "ema_halflife_kimg": 500.0, "ckpt_every": 5000}
_CIFAR10_DATA = "CIFAR-10 (50,000 32x32 RGB images)"

PRESETS: dict[str, Preset] = {
    "demo": Preset("FDM-EDM on the bundled 16-px digits' train split, sized for a 2-core CPU (~4 min)",
                   {"run_dir": "runs/demo", "data": "digits16", "data_split": "train", "process": "fdm-edm",
                    "net": "ddpmpp-tiny", "batch": 64, "steps": 1200, "lr": 2e-3, "lr_warmup": 100,
                    "ema_halflife_kimg": 10.0, "ckpt_every": 400}),
    "edm-cifar10": Preset(f"EDM's DDPM++ CIFAR-10 setup on --data {_CIFAR10_DATA}: 200 Mimg, for GPUs",
                          {"run_dir": "runs/edm-cifar10", "process": "edm", **_EDM_CIFAR10}, _CIFAR10_DATA),
    "fdm-edm-cifar10": Preset(f"FDM-EDM (multiplier 2, 200-step loss warm-up) in EDM's CIFAR-10 setup on --data "
                              f"{_CIFAR10_DATA}: 200 Mimg, for GPUs",
                              {"run_dir": "runs/fdm-edm-cifar10", "process": "fdm-edm",
                               "process_options": {"multiplier": 2.0, "warmup_ite": 200}, **_EDM_CIFAR10},
                              _CIFAR10_DATA),
}


def saved_config(run_dir: str | Path) -> TrainConfig:
    """The configuration of the run in ``run_dir`` (its config.json): what ``--resume`` continues."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        what = "does not exist" if not Path(run_dir).exists() else "holds no run (no config.json)"
        raise UserError(f"--resume: {run_dir} {what}; start the run without --resume, or name its --run-dir")
    try:
        return TrainConfig.from_json(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable training config ({e})") from None


def with_overrides(cfg: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """``cfg`` with the fields ``overrides`` names; ``*_options`` entries are merged into ``cfg``'s dicts."""
    merged = {k: {**getattr(cfg, k), **v} if k.endswith("_options") else v for k, v in overrides.items()}
    return replace(cfg, **merged)


def _named(name: str) -> Preset:
    if name not in PRESETS:
        raise UserError(f"unknown preset '{name}': choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def preset(name: str, **overrides: Any) -> TrainConfig:
    """The preset's configuration with ``overrides``; a preset that needs user data refuses to start without it."""
    p = _named(name)
    if p.needs_data and "data" not in overrides:
        hint = f"{name.split('-')[-1]}.zip"
        raise UserError(f"preset '{name}' trains on {p.needs_data}, which is not bundled: make a zip with "
                        f"`fastdiffusion dataset IMAGES_FOLDER {hint}` and pass --data {hint}")
    return with_overrides(TrainConfig(**p.config), overrides)


def resolve_config(*, preset_name: str | None, config_path: Path | None, overrides: dict[str, Any],
                   resume: bool) -> TrainConfig:
    """The configuration a ``train`` command runs: for ``resume`` the run's own config.json (in --run-dir, else the
    preset's run dir), else a preset, a config file or the defaults; then the flags given (``overrides``)."""
    if resume:
        if config_path is not None:
            raise UserError("--resume continues the run's own config.json; drop --config (flags given with --resume "
                            "change only what they name)")
        default_dir = _named(preset_name).config["run_dir"] if preset_name else TrainConfig.run_dir
        run_dir = overrides.get("run_dir") or default_dir
        return with_overrides(saved_config(run_dir), overrides)
    if config_path is not None:
        try:
            cfg = TrainConfig.from_json(json.loads(config_path.read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as e:
            raise UserError(f"--config {config_path}: not a readable training config ({e})") from None
        return with_overrides(cfg, overrides)
    return preset(preset_name, **overrides) if preset_name else with_overrides(TrainConfig(), overrides)
