"""``fastdiffusion distill train``: fit a DSNO student to stored teacher trajectories.

The student is a ``OneStepGenerator`` around a ``DSNOOperator`` built from the teacher's network config and
initialised with the teacher's weights (its TimeConv layers start as the identity); an FDM teacher's student takes
the base process's preconditioning (``EDMFamily.one_level_process``: FDM's c_in at sigma_T would hide the noise). For a
batch of stored noises z (x_T = sigma_T z) and teacher states x*_m at the M output sigmas, the loss is the
reference's weighted trajectory loss

    L = (1/M) sum_m w_m L_m,    w_m = clamp(alpha_m / sigma_m, 1, w_max) = clamp(1 / sigma_m, 1, w_max)

(alpha/sigma of a VP schedule is 1/sigma in EDM's sigma-space; sigma_0 = 0 gets w_max, 10^4 in the reference, so the
final sample dominates), with the per-time error L_m one of

    l1          mean |x_m - x*_m|                       (the reference's ImageNet-64 setting)
    l2          mean (x_m - x*_m)^2
    perceptual  mean_f (phi(D_m) - phi(D*_m))^2         phi = the bundled digits classifier's 64-d features

For 'perceptual' the reference uses LPIPS-VGG, which needs downloaded weights; offline we use the project's digits
classifier (``metrics.digits_classifier``) as the perceptual space, so it only fits digit-like images. It compares the
data estimates D_m = (x_m - r_m x_T) / (1 - r_m), r_m = sigma_m / sigma_T, of student and teacher (images at every m;
D_0 is the sample), not the noisy states.

Training: Adam with linear warm-up, EMA with a half-life in images, bf16 autocast on CUDA, DDP under torchrun (every
step's random rows are drawn for the global batch from one shared generator and each rank takes its part), atomic
checkpoints with ``--resume``. Every checkpoint's ``ema.safetensors`` is a model file that ``load_model`` reads, and
``run_dir/student.safetensors`` is the final EMA student: ``fastdiffusion sample RUN --sampler dsno --nfe 1``. At
every checkpoint the spread of the EMA student's samples of 64 fixed noises is compared with the teacher's
(``spread_ratio``, logged); below 0.1 they have collapsed to nearly one image, and a warning is printed and logged.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..checkpoint import (
    META_KEY,
    atomic_write_bytes,
    atomic_write_json,
    clean_partial,
    list_checkpoints,
    prune_checkpoints,
    read_weights,
    sha256,
    state_dict_cpu,
    verify_checkpoint,
    write_checkpoint,
)
from ..cli_args import check_device
from ..errors import UserError
from ..fastpath import FastPath
from ..models import OneStepGenerator, load_model, model_meta, resolve_model_file
from ..nets import build_net, net_config
from ..plots import save_samples
from ..training import distributed
from ..training.config import setting
from ..training.ema import EMA, ema_beta
from ..training.lock import RunLock
from ..training.logger import LOGGERS, check_logger
from ..training.steploop import (
    StepLoop,
    guarded_update,
    load_optimizer,
    optimizer_tensors,
    run_and_close,
    truncate_log,
)
from .trajectories import TrajectorySet

__all__ = ["DistillConfig", "DistillTrainer", "build_student", "collapse_warning", "distill", "select_times",
           "spread_ratio", "time_weights", "trajectory_loss"]

LOSSES = ("l1", "l2", "perceptual")

# The collapse check: the EMA student's samples from the noises of the last COLLAPSE_ROWS trajectories, their
# per-value spread over the batch relative to the teacher's samples of the same noises (spread_ratio). A working
# student keeps most of the teacher's spread, a collapsed one almost none (docs/guide.md, "Distil to one call").
COLLAPSE_ROWS = 64
COLLAPSE_RATIO = 0.1


@dataclass
class DistillConfig:
    traj_dir: str = setting("", "a directory written by `distill trajectories`")
    teacher: str | None = setting(None, "the teacher: model file or run dir (default: the path the trajectory "
                                  "manifest records)")
    run_dir: str = setting("runs/dsno", "directory of the run: config.json, log.jsonl, checkpoints, "
                           "student.safetensors")
    modes: int = setting(2, "K, Fourier modes kept by each TimeConv (<= M // 2 + 1); 0: no TimeConv layers "
                         "(ablation)")
    times: int = setting(0, "M output times used of those stored (every (M_stored / M)-th, m = 0 first); 0: all")
    activation: str = setting("none", "TimeConv output activation: none | leaky_relu (the reference's)")
    loss: str = setting("l1", f"per-time error: {' | '.join(LOSSES)} (perceptual: the bundled digits "
                        "classifier's features)")
    weight_max: float = setting(1e4, "w_max of the time weights clamp(1 / sigma_m, 1, w_max)")
    holdout: int = setting(0, "the last HOLDOUT trajectories are not trained on; their error is logged at "
                           "checkpoints")
    batch: int = setting(32, "global batch (all GPUs)")
    steps: int = setting(2000, "optimiser steps to train to")
    lr: float = setting(2e-4, "Adam learning rate after warm-up")
    lr_warmup: int = setting(100, "steps of linear learning-rate warm-up")
    adam_betas: tuple[float, float] = setting((0.9, 0.999), "Adam's beta1 beta2")
    ema_halflife_kimg: float = setting(500.0, "EMA half-life in thousands of trajectories")
    ema_rampup: float | None = setting(0.05, "EMA half-life at most this fraction of the trajectories seen (None: "
                                       "no ramp-up)")
    grad_clip: float | None = setting(None, "clip the global gradient norm to this value (default: off)")
    precision: str = setting("auto", "auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16")
    seed: int = setting(0, "seed of the batch draws and dropout")
    ckpt_every: int = setting(500, "steps between checkpoints")
    keep_ckpts: int = setting(3, "newest checkpoints kept")
    log_every: int = setting(25, "steps between log rows")
    logger: str = setting("jsonl", f"{' | '.join(LOGGERS)}: log.jsonl always; tensorboard also writes "
                          f"RUN_DIR/tensorboard (pip install 'fastdiffusion[tensorboard]')")
    grid_images: int = setting(64, "images in the sample grid (the last trajectories' noises)")
    device: str = setting("auto", "auto (CUDA if present) | cpu | cuda | cuda:N")

    def validate(self) -> None:
        if self.loss not in LOSSES:
            raise UserError(f"--loss must be one of {', '.join(LOSSES)}, got '{self.loss}'")
        if self.batch < 1 or self.steps < 1 or not self.lr > 0 or self.ckpt_every < 1 or self.log_every < 1:
            raise UserError("--batch, --steps, --ckpt-every, --log-every must be >= 1 and --lr > 0")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise UserError(f"--precision must be auto, fp32 or bf16, got '{self.precision}'")
        if not self.weight_max >= 1 or self.holdout < 0:
            raise UserError("--weight-max must be >= 1 and --holdout >= 0")
        if self.modes < 0 or self.times < 0:
            raise UserError("--modes and --times must be >= 0")
        check_logger(self.logger)
        check_device(self.device)


# Settings a resumed run must share with the checkpoint it continues.
RESUME_KEYS = ("modes", "times", "activation", "loss", "weight_max", "holdout", "batch", "seed")


def select_times(manifest: dict, times: int) -> tuple[list[int], dict]:
    """The stored output times a student of ``times`` output times uses, and the manifest seen through them.

    Every (M_stored / M)-th stored time, starting at m = 0 (the final sample). The uniform and quadratic grids
    tau_m = (m / M_stored)^p keep their form: m = j M_stored / M gives tau = (j / M)^p, so a set stored at M = 8
    serves the M = 4, 2 and 1 ablations. ``times = 1`` keeps only the final sample."""
    stored = manifest["times"]
    if times == 0:
        return list(range(stored)), manifest
    if times > stored or stored % times:
        raise UserError(f"--times {times} must divide the {stored} output times the trajectories store")
    idx = list(range(0, stored, stored // times))
    per_time = ("sigmas", "cond_sigmas", "step_index", "tau")
    view = {**manifest, "times": times, **{k: [manifest[k][i] for i in idx] for k in per_time}}
    return idx, view


def time_weights(sigmas: Tensor, weight_max: float) -> Tensor:
    """w_m = clamp(1 / sigma_m, 1, w_max) (1/0 = w_max), float32 (M,)."""
    inv = torch.where(sigmas > 0, 1 / sigmas.clamp(min=1e-30), torch.full_like(sigmas, float("inf")))
    return inv.clamp(1.0, weight_max).float()


def trajectory_loss(pred: Tensor, target: Tensor, weights: Tensor, kind: str, *, x_t: Tensor | None = None,
                    ratios: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(loss, per-time errors L_m (M,)) for predicted and target states (N, M, ...); see the module docstring.

    'perceptual' needs the initial states ``x_t`` (N, ...) and ``ratios`` r_m (M,) to form the data estimates."""
    if kind == "perceptual":
        from ..metrics.digits_classifier import load_classifier, prepare_digits

        if pred.ndim != 5 or pred.shape[2] not in (1, 3):
            raise UserError("--loss perceptual uses the digits classifier's features: it needs 1- or 3-channel images")
        net = load_classifier(pred.device)
        feats = [net.features(prepare_digits(OneStepGenerator.data_estimates(x_t, s, ratios).flatten(0, 1)))
                 for s in (pred, target)]
        per = (feats[0] - feats[1]).float().square().mean(1).reshape(pred.shape[:2])
    else:
        diff = pred - target
        per = (diff.abs() if kind == "l1" else diff.square()).flatten(2).mean(2)
    per_time = per.mean(0)
    return (weights * per_time).mean(), per_time


def spread_ratio(samples: Tensor, reference: Tensor) -> float:
    """Per-value standard deviation over the batch, averaged over values, of ``samples`` divided by that of
    ``reference`` (N >= 2 rows each): about 1 when the samples vary as much as the teacher's, near 0 when every sample
    is the same. NaN if the reference itself does not vary."""
    ref = float(reference.float().flatten(1).std(0).mean())
    return float(samples.float().flatten(1).std(0).mean()) / ref if ref > 0 else float("nan")


def collapse_warning(ratio: float, n: int, step: int) -> str | None:
    """The one-line warning for a student whose ``spread_ratio`` on ``n`` fixed noises is below COLLAPSE_RATIO, or
    None."""
    if not ratio < COLLAPSE_RATIO:
        return None
    return (f"the student's samples have collapsed at step {step}: their per-pixel spread over {n} fixed noises is "
            f"{ratio:.1%} of the teacher's (below {COLLAPSE_RATIO:.0%}), so it makes nearly one image; train longer "
            f"(--steps) or with a higher --lr, or lower --ema-halflife-kimg (docs/guide.md, 'Distil to one call')")


def build_student(teacher: torch.nn.Module, manifest: dict, modes: int, activation: str = "none") -> OneStepGenerator:
    """A ``OneStepGenerator`` whose operator wraps the teacher's network config, with the teacher's weights, and the
    teacher's process (its base for FDM: ``one_level_process``)."""
    tcfg = teacher.net_config
    cfg = net_config("dsno", in_channels=tcfg["in_channels"], out_channels=tcfg["out_channels"], backbone=tcfg,
                     num_times=manifest["times"], modes=modes, activation=activation)
    net = build_net(**cfg)
    net.backbone.load_state_dict(teacher.net.state_dict())
    return OneStepGenerator(net, teacher.process.one_level_process, cfg, tuple(manifest["data_shape"]),
                            sigmas=manifest["sigmas"], cond_sigmas=manifest["cond_sigmas"],
                            sigma_max=manifest["sigma_max"])


def _load_teacher(cfg: DistillConfig, manifest: dict, device: torch.device) -> torch.nn.Module:
    recorded = manifest["teacher"]
    path = cfg.teacher or recorded.get("path")
    if not path:
        raise UserError("the trajectories do not record a teacher file: pass --teacher MODEL")
    teacher = load_model(path, device=device)
    if json.loads(json.dumps(model_meta(teacher))) != recorded["meta"]:
        raise UserError(f"--teacher {path}: not the model these trajectories were made with (its description "
                        f"differs from the manifest's)")
    if recorded.get("sha256") and sha256(resolve_model_file(path)) != recorded["sha256"]:
        print(f"warning: --teacher {path} has other weights than the trajectories' teacher ({recorded['path']}); "
              f"the student starts from the weights given", file=sys.stderr)
    return teacher


class DistillTrainer(StepLoop):
    """One distillation run; ``run()`` trains to ``cfg.steps``."""

    desc = "distill"
    rate_key = "traj_per_s"

    def __init__(self, cfg: DistillConfig, resume: bool = False, quiet: bool = False) -> None:
        cfg.validate()
        self.cfg, self.quiet = cfg, quiet
        self.dist = distributed.setup(cfg.device)
        dev = self.dist.device
        if cfg.batch % self.dist.world_size:
            raise UserError(f"--batch {cfg.batch} must divide evenly over {self.dist.world_size} processes")
        self.data = TrajectorySet(cfg.traj_dir)
        self.time_index, manifest = select_times(self.data.manifest, cfg.times)
        self.n_train = len(self.data) - cfg.holdout
        if self.n_train < 1:
            raise UserError(f"--holdout {cfg.holdout} leaves none of the {len(self.data)} trajectories to train on")
        self.manifest_sha = sha256(Path(cfg.traj_dir) / "manifest.json")
        self.model = build_student(_load_teacher(cfg, manifest, dev), manifest, cfg.modes, cfg.activation).to(dev)
        self.ema = EMA(self.model)
        self.weights = time_weights(torch.tensor(manifest["sigmas"], dtype=torch.float64), cfg.weight_max).to(dev)
        self.bf16 = FastPath.resolve(dev, precision=cfg.precision).bf16
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=cfg.adam_betas, fused=True)
        self.gen = torch.Generator().manual_seed(cfg.seed)  # CPU: it indexes the memory-mapped rows
        self.step = 0
        self.last_check: dict | None = None  # the newest collapse check's log row
        self.run_dir = Path(cfg.run_dir)
        self.lock: RunLock | None = None
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.lock = RunLock(self.run_dir)
        try:
            torch.manual_seed(cfg.seed + 1000 * self.dist.rank)  # dropout stream, per rank
            if resume:
                self._resume()
            elif list_checkpoints(self.run_dir):
                raise UserError(f"{self.run_dir} already holds checkpoints: pass --resume to continue, "
                                f"or choose another --run-dir")
            self.ddp = (DistributedDataParallel(self.model, device_ids=[dev] if dev.type == "cuda" else None)
                        if self.dist.world_size > 1 else self.model)
            if self.dist.is_main:
                atomic_write_json(self.run_dir / "config.json", self._config_json())
        except BaseException:
            self.close()
            raise

    def _config_json(self) -> dict:
        return {**asdict(self.cfg), "manifest_sha256": self.manifest_sha}

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def _resume(self) -> None:
        if self.dist.is_main:
            clean_partial(self.run_dir)
        ckpts = list_checkpoints(self.run_dir)
        if not ckpts:
            return
        ckpt, state = ckpts[0], verify_checkpoint(ckpts[0])
        saved = state.get("config", {})
        for key in (*RESUME_KEYS, "manifest_sha256"):
            mine = self._config_json()[key]
            if saved.get(key) != (list(mine) if isinstance(mine, tuple) else mine):
                raise UserError(f"{ckpt}: was trained with {key}={saved.get(key)!r}, this run has {mine!r}; use the "
                                f"same setting and trajectories, or a new --run-dir")
        weights, _ = read_weights(ckpt / "model.safetensors")
        ema_w, _ = read_weights(ckpt / "ema.safetensors")
        opt_t, _ = read_weights(ckpt / "optimizer.safetensors")
        self.model.net.load_state_dict(weights)
        self.ema.model.net.load_state_dict(ema_w)
        load_optimizer(self.opt, opt_t, state["optimizer"])
        self.gen.set_state(opt_t["rng.step_generator"])
        if f"rng.torch.{self.dist.rank}" in opt_t:
            torch.set_rng_state(opt_t[f"rng.torch.{self.dist.rank}"])
        self.step = state["step"]
        if self.dist.is_main:
            truncate_log(self.run_dir / "log.jsonl", self.step)
            if not self.quiet:
                print(f"resuming from {ckpt} (step {self.step})")

    def save_checkpoint(self) -> Path:
        meta = model_meta(self.model)
        opt_t, opt_meta = optimizer_tensors(self.opt)
        files = {"model.safetensors": (state_dict_cpu(self.model.net), meta),
                 "ema.safetensors": (state_dict_cpu(self.ema.model.net), meta),
                 "optimizer.safetensors": ({**opt_t, "rng.step_generator": self.gen.get_state(),
                                           "rng.torch.0": torch.get_rng_state()}, {})}
        state = {"config": self._config_json(), "optimizer": opt_meta, "model": meta,
                 "trajectories_seen": self.step * self.cfg.batch}
        path = write_checkpoint(self.run_dir, self.step, files, state)
        prune_checkpoints(self.run_dir, self.cfg.keep_ckpts)
        return path

    def save_student(self) -> Path:
        """The EMA student as one model file, ``run_dir/student.safetensors`` (written atomically)."""
        path = self.run_dir / "student.safetensors"
        blob = save(state_dict_cpu(self.ema.model.net), metadata={META_KEY: json.dumps(model_meta(self.ema.model))})
        atomic_write_bytes(path, blob)
        return path

    def rows(self, idx: Sequence[int] | Tensor) -> tuple[Tensor, Tensor]:
        """Stored noises and teacher states of trajectories ``idx``, at the student's output times."""
        z, x = self.data.rows(idx)
        return z, x[:, self.time_index]

    # -- evaluation ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, rows: range) -> dict:
        """Per-pixel mean squared error of the EMA student to the teacher's states on trajectory ``rows``, per output
        time (index 0: the final sample), and the noise-to-endpoint baseline mean (z - x*_0)^2: the error of taking the
        noise itself as the sample."""
        dev, model = self.dist.device, self.ema.model
        sq, base, n = 0.0, 0.0, 0
        for lo in range(rows.start, rows.stop, 256):
            z, x = self.rows(list(range(lo, min(lo + 256, rows.stop))))
            z, x = z.to(dev), x.to(dev)
            with torch.autocast(dev.type, torch.bfloat16, enabled=self.bf16):
                pred = model(self.data.manifest["sigma_max"] * z)
            sq = sq + (pred - x).square().flatten(2).mean(2).sum(0)
            base += float((z - x[:, 0]).square().flatten(1).mean(1).sum())
            n += len(z)
        per_time = (sq / n).tolist()
        return {"mse_per_time": per_time, "mse_final": per_time[0], "baseline_noise_mse": base / n}

    @torch.no_grad()
    def check_collapse(self, announce: bool = True) -> dict | None:
        """Log the EMA student's ``spread_ratio`` on the last COLLAPSE_ROWS trajectories' noises (vs the teacher's
        samples of them) and, below COLLAPSE_RATIO, a warning, printed if ``announce``; returns the log row."""
        n = min(COLLAPSE_ROWS, len(self.data))
        if n < 2:
            return None
        z, x = self.rows(list(range(len(self.data) - n, len(self.data))))
        out = self.ema.model(self.data.manifest["sigma_max"] * z.to(self.dist.device))[:, 0]
        ratio = spread_ratio(out.cpu(), x[:, 0])
        row = {"step": self.step, "spread_ratio": ratio}
        warning = collapse_warning(ratio, n, self.step)
        if warning:
            row["warning"] = warning
            if announce:
                tqdm.write(f"warning: {warning}", file=sys.stderr)  # above the progress bar
        self._log(row)
        self.last_check = row
        return row

    def write_grid(self) -> None:
        n = min(self.cfg.grid_images, len(self.data))
        z, x = self.rows(list(range(len(self.data) - n, len(self.data))))
        with torch.no_grad():
            out = self.ema.model(self.data.manifest["sigma_max"] * z.to(self.dist.device))[:, 0].cpu()
        save_samples(out, self.run_dir / "samples.png", reference=x[:, 0] if out.ndim == 2 else None)

    # -- the loop ------------------------------------------------------------------------------------------------
    def train_step(self) -> tuple[Tensor, Tensor]:
        cfg, world, rank = self.cfg, self.dist.world_size, self.dist.rank
        for g in self.opt.param_groups:
            g["lr"] = cfg.lr * min((self.step + 1) / max(cfg.lr_warmup, 1), 1.0)
        idx = torch.randint(self.n_train, (cfg.batch,), generator=self.gen)
        chunk = cfg.batch // world
        z, x = self.rows(idx[rank * chunk:(rank + 1) * chunk])
        z, x = z.to(self.dist.device, non_blocking=True), x.to(self.dist.device, non_blocking=True)
        x_t = self.data.manifest["sigma_max"] * z
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.dist.device.type, torch.bfloat16, enabled=self.bf16):
            pred = self.ddp(x_t)
            loss, _ = trajectory_loss(pred, x, self.weights, cfg.loss, x_t=x_t, ratios=self.model.ratios())
        loss.backward()
        self.step += 1
        bad = guarded_update(self.model, self.opt, self.ema, loss.detach(), cfg.grad_clip,
                             ema_beta(cfg.batch, self.step * cfg.batch, cfg.ema_halflife_kimg, cfg.ema_rampup))
        return torch.where(bad > 0, torch.zeros_like(loss), loss.detach()), bad

    def at_checkpoint(self) -> None:
        self.save_checkpoint()
        if self.cfg.holdout:
            self._log({"step": self.step, "heldout": self.evaluate(range(self.n_train, len(self.data)))})
        self.check_collapse(announce=self.step < self.cfg.steps)  # the last one is announced after the progress bar
        self.write_grid()

    def run(self) -> Path:
        self.run_loop()
        if not self.dist.is_main:
            return self.run_dir / "student.safetensors"
        path = self.save_student()
        row = self.last_check
        if row is None or row["step"] != self.step:  # nothing trained in this session: check the student as it is
            row = self.check_collapse(announce=False)
        if row is not None and "warning" in row:
            print(f"warning: {row['warning']}", file=sys.stderr)
        return path


def distill(cfg: DistillConfig, resume: bool = False, quiet: bool = False) -> Path:
    """Train a DSNO student to ``cfg.steps``; returns the path of the EMA student model file."""
    return run_and_close(lambda: DistillTrainer(cfg, resume=resume, quiet=quiet))
