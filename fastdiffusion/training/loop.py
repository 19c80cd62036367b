"""``fastdiffusion train``: the training loop (Adam, lr warm-up, EMA, bf16 autocast, accumulation, DDP, resume).

Every random draw of a step (examples, flips, noise levels, noise) is made for the *global* batch from one generator
that all ranks share, and each rank takes its rows. So a run gives the same updates whatever the number of GPUs or
accumulation rounds (up to float summation order), and a resumed run continues the exact random stream.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..checkpoint import (
    atomic_write_bytes,
    atomic_write_json,
    clean_partial,
    list_checkpoints,
    prune_checkpoints,
    read_weights,
    state_dict_cpu,
    verify_checkpoint,
    write_checkpoint,
)
from ..data import Dataset, load_dataset, random_hflip
from ..errors import UserError
from ..fastpath import FastPath
from ..models import ProcessModel, model_meta
from ..nets import build_net, net_config
from ..plots import plot_loss, save_samples
from ..processes import Process, make_process
from ..sampling import sample
from ..seeds import SeededNoise
from . import distributed
from .config import RESUME_KEYS, TrainConfig
from .ema import EMA, ema_beta
from .lock import RunLock


@dataclass
class Batch:
    """One step's global random draws."""

    x0: Tensor
    sigma: Tensor
    noise: Tensor


def _layout(x: Tensor) -> torch.memory_format:
    channels_last = x.ndim == 4 and x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


def draw_batch(data: Tensor, cfg: TrainConfig, process: Process, gen: torch.Generator) -> Batch:
    """Examples (with optional flips), sigma ~ the process's training density, and noise, for the global batch."""
    idx = torch.randint(len(data), (cfg.batch,), generator=gen, device=gen.device)
    x0 = data[idx.to(data.device)].to(gen.device)
    x0 = x0.contiguous(memory_format=_layout(data))
    if cfg.xflip and x0.ndim == 4:
        x0 = random_hflip(x0, gen)
    sigma = process.sample_sigma(cfg.batch, gen)
    noise = torch.randn(process.noise_shape(x0.shape), generator=gen, device=gen.device)
    noise = noise.contiguous(memory_format=_layout(x0))
    return Batch(x0, sigma, noise)


def _net_config_for(cfg: TrainConfig, data: Dataset, process: Process) -> dict:
    groups = process.state_groups  # PSLD's network sees and predicts (x, m): 2C channels
    if data.kind == "points":
        arch = "mlp" if cfg.net.startswith("ddpmpp") or cfg.net.startswith("ncsnpp") else cfg.net
        return net_config(arch, in_channels=groups * data.shape[0], **cfg.net_options)
    c, h, w = data.shape
    if h != w:
        raise UserError(f"data '{cfg.data}' has {h}x{w} images: the U-Nets need square images (use --resolution)")
    return net_config(cfg.net, img_resolution=h, in_channels=groups * c, out_channels=groups * c, **cfg.net_options)


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    sd = opt.state_dict()
    tensors = {f"opt.{i}.{k}": v.detach().cpu().contiguous() for i, s in sd["state"].items() for k, v in s.items()}
    return tensors, {"param_groups": sd["param_groups"]}


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Tensor]] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, i, k = key.split(".", 2)
            state.setdefault(int(i), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    for p, st in opt.state.items():  # moments take their parameter's memory layout (channels_last) back
        for k, v in st.items():
            if v.shape == p.shape:
                st[k] = torch.empty_like(p).copy_(v)


def _rng_tensors(gen: torch.Generator) -> dict[str, Tensor]:
    out = {"rng.step_generator": gen.get_state(), "rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["rng.cuda"] = torch.cuda.get_rng_state()
    return out


def guarded_update(model: torch.nn.Module, opt: torch.optim.Optimizer, ema: EMA, loss: Tensor,
                   grad_clip: float | None, beta: float) -> Tensor:
    """Clip the global gradient norm, take the (fused) Adam step unless the loss or gradients are non-finite, then
    move the EMA; returns 1.0 for a skipped step, 0.0 otherwise, as a device tensor (no host sync)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    bad = (~(torch.isfinite(norm) & torch.isfinite(loss))).float()
    if grad_clip:
        torch._foreach_mul_(grads, (grad_clip / (norm + 1e-6)).clamp(max=1.0))
    opt.found_inf = bad  # the fused step is skipped on device when it is 1
    opt.step()
    ema.update(model, beta)  # a skipped step left the weights unchanged, so the EMA needs no guard
    return bad


def truncate_log(path: Path, step: int) -> None:
    """Drop log rows past ``step``: a resumed run re-does those steps and logs them again."""
    if path.is_file():
        rows = [line for line in path.read_text().splitlines() if line.strip()]
        keep = [line for line in rows if json.loads(line).get("step", 0) <= step]
        if len(keep) != len(rows):
            atomic_write_bytes(path, "".join(line + "\n" for line in keep).encode())


def _check_resume_config(ckpt: Path, saved: dict, cfg: TrainConfig) -> None:
    for key in RESUME_KEYS:
        mine = cfg.to_json()[key]
        theirs = saved.get(key)
        if isinstance(mine, tuple):
            mine = list(mine)
        if theirs != mine:
            raise UserError(f"{ckpt}: was trained with {key}={theirs!r}, this run asks {key}={mine!r}; "
                            f"use the same setting or a new --run-dir")


class StepLoop:
    """The step / log / checkpoint cadence shared by training and distillation.

    A subclass sets ``cfg`` (steps, log_every, ckpt_every, batch), ``dist``, ``run_dir``, ``opt``, ``step``, ``quiet``
    and ``lock``, and defines ``train_step() -> (loss, skipped)`` (device tensors: no host sync) and
    ``at_checkpoint()`` (main rank). ``on_faults(n)`` may roll the state back after ``n`` skipped steps in a row.
    """

    desc = "train"
    rate_key = "img_per_s"
    fault_run = 0  # non-finite steps since the last log interval without any

    def on_faults(self, n_bad: int) -> bool:
        """Handle ``n_bad`` non-finite steps in a row; True if the state was rolled back."""
        return False

    def _log(self, row: dict) -> None:
        with open(self.run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    def run_loop(self) -> None:
        cfg, main = self.cfg, self.dist.is_main
        bar = tqdm(total=cfg.steps, initial=self.step, desc=self.desc, disable=self.quiet or not main,
                   dynamic_ncols=True)
        zero = torch.zeros((), device=self.dist.device)
        loss_sum, bad_sum = zero.clone(), zero.clone()
        n_sum, t0 = 0, time.perf_counter()
        while self.step < cfg.steps:
            loss, bad = self.train_step()
            loss_sum += loss
            bad_sum += bad
            n_sum += 1
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                if self.dist.world_size > 1:
                    dist.all_reduce(loss_sum)
                    loss_sum /= self.dist.world_size
                dt = time.perf_counter() - t0
                n_bad = int(bad_sum.item())
                row = {"step": self.step, "kimg": self.step * cfg.batch / 1000,
                       "loss": loss_sum.item() / max(n_sum - n_bad, 1), "lr": self.opt.param_groups[0]["lr"],
                       self.rate_key: n_sum * cfg.batch / max(dt, 1e-9)}
                if n_bad:
                    row["skipped_nonfinite"] = n_bad
                if main:
                    self._log(row)
                    bar.set_postfix(loss=f"{row['loss']:.4g}", rate=f"{row[self.rate_key]:.0f}/s")
                    bar.update(n_sum)
                loss_sum.zero_()
                bad_sum.zero_()
                n_sum, t0 = 0, time.perf_counter()
                self.fault_run = self.fault_run + n_bad if n_bad else 0
                if self.fault_run and self.on_faults(self.fault_run):
                    self.fault_run = 0
                    bar.reset(total=cfg.steps)
                    bar.update(self.step)
                    continue
            if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps:
                if main:
                    self.at_checkpoint()
                    plot_loss(self.run_dir / "log.jsonl", self.run_dir / "loss.png")
                if self.dist.world_size > 1:
                    dist.barrier()
                t0 = time.perf_counter()
        bar.close()

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()


def run_and_close(make: Callable[[], StepLoop]) -> Path:
    """Build a loop, run it to the end, then release its lock and the process group whatever happens."""
    loop = None
    try:
        loop = make()
        return loop.run()
    finally:
        if loop is not None:
            loop.close()
        distributed.teardown()


class Trainer(StepLoop):
    """Holds the state of one training run; ``run()`` trains to ``cfg.steps``."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, quiet: bool = False) -> None:
        cfg.validate()
        self.cfg, self.quiet = cfg, quiet
        self.dist = distributed.setup(cfg.device)
        dev = self.dist.device
        if cfg.batch % (self.dist.world_size * cfg.accum):
            raise UserError(f"--batch {cfg.batch} must divide evenly over {self.dist.world_size} process(es) "
                            f"x {cfg.accum} accumulation round(s)")
        self.run_dir = Path(cfg.run_dir)
        self.data = load_dataset(cfg.data, split=cfg.data_split)
        self.process = make_process(cfg.process, **cfg.process_options)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        ncfg = _net_config_for(cfg, self.data, self.process)
        self.model = ProcessModel(build_net(**ncfg), self.process, ncfg, self.data.shape).to(dev)
        self.fast = FastPath.resolve(dev, precision=cfg.precision, channels_last=cfg.channels_last,
                                     compile=cfg.compile, cudnn_benchmark=cfg.cudnn_benchmark,
                                     image=self.data.kind == "image")
        self.fast.apply_backend()
        self.bf16, self.channels_last, self.compiled = self.fast.bf16, self.fast.channels_last, self.fast.compile
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.ema = EMA(self.model)
        # Fused Adam skips a step on device when ``found_inf`` is set: non-finite steps cost no host sync.
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=cfg.adam_betas, fused=True)
        self.gen = torch.Generator(dev).manual_seed(cfg.seed)
        self.step = 0
        self.lr_scale = 1.0  # lowered by each roll-back after repeated non-finite steps
        self.rollbacks = 0
        self._rng: dict[str, Tensor] | None = None
        self.lock: RunLock | None = None
        self.train_data = self.data.x.to(dev)
        if self.channels_last:
            self.train_data = self.train_data.contiguous(memory_format=torch.channels_last)
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.lock = RunLock(self.run_dir)
        try:
            self._start(resume)
        except BaseException:
            self.close()
            raise

    def _start(self, resume: bool) -> None:
        cfg, dev = self.cfg, self.dist.device
        if resume:
            self._resume()
        elif list_checkpoints(self.run_dir):
            raise UserError(f"{self.run_dir} already holds checkpoints: pass --resume to continue, "
                            f"or choose another --run-dir")
        torch.manual_seed(cfg.seed + 1000 * self.dist.rank + self.step)  # dropout stream, per rank
        if self._rng is not None:
            torch.set_rng_state(self._rng["rng.torch"])
        self.ddp = self.model
        if self.dist.world_size > 1:
            bucket = {} if cfg.ddp_bucket_mb is None else {"bucket_cap_mb": cfg.ddp_bucket_mb}
            # Gradients as views into the buckets: no copy of every gradient into its bucket before the all-reduce.
            self.ddp = DistributedDataParallel(self.model, device_ids=[dev] if dev.type == "cuda" else None,
                                               gradient_as_bucket_view=True, **bucket)
        if self.compiled:
            self.ddp = torch.compile(self.ddp, options=cfg.compile_options or None)
        if self.dist.is_main:
            atomic_write_json(self.run_dir / "config.json", cfg.to_json())

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def _resume(self) -> None:
        if self.dist.is_main:
            clean_partial(self.run_dir)
        if not list_checkpoints(self.run_dir):
            if self.dist.is_main:
                truncate_log(self.run_dir / "log.jsonl", 0)
                if not self.quiet:
                    print(f"no checkpoint in {self.run_dir}: starting from scratch")
            return
        ckpt = self._load_newest_valid()
        if self.dist.is_main:
            truncate_log(self.run_dir / "log.jsonl", self.step)
            if not self.quiet:
                print(f"resuming from {ckpt} (step {self.step})")

    def _load_newest_valid(self) -> Path:
        """Load the newest checkpoint that passes its checksums, saying which ones were skipped and why."""
        for ckpt in list_checkpoints(self.run_dir):
            try:
                state = verify_checkpoint(ckpt)
            except UserError as e:
                print(f"warning: skipping checkpoint {ckpt.name}: {e}", file=sys.stderr)
                continue
            _check_resume_config(ckpt, state.get("config", {}), self.cfg)
            self._load(ckpt, state)
            return ckpt
        raise UserError(f"{self.run_dir}: no valid checkpoint to resume from (all failed their checks)")

    def _load(self, ckpt: Path, state: dict) -> None:
        weights, _ = read_weights(ckpt / "model.safetensors")
        ema_w, _ = read_weights(ckpt / "ema.safetensors")
        opt_t, _ = read_weights(ckpt / "optimizer.safetensors")
        try:
            self.model.net.load_state_dict(weights)
            self.ema.model.net.load_state_dict(ema_w)
            load_optimizer(self.opt, opt_t, state["optimizer"])
        except (RuntimeError, KeyError, ValueError) as e:
            raise UserError(f"{ckpt}: does not fit this run's network ({str(e).splitlines()[0]})") from None
        self.gen.set_state(opt_t["rng.step_generator"])
        if "rng.cuda" in opt_t and self.dist.device.type == "cuda":
            torch.cuda.set_rng_state(opt_t["rng.cuda"])
        self._rng = opt_t
        self.step = state["step"]
        self.lr_scale = state.get("lr_scale", 1.0)

    def save_checkpoint(self) -> Path:
        meta = model_meta(self.model)
        opt_t, opt_meta = optimizer_tensors(self.opt)
        files = {
            "model.safetensors": (state_dict_cpu(self.model.net), meta),
            "ema.safetensors": (state_dict_cpu(self.ema.model.net), meta),
            "optimizer.safetensors": ({**opt_t, **_rng_tensors(self.gen)}, {}),
        }
        state = {"config": self.cfg.to_json(), "images_seen": self.step * self.cfg.batch, "optimizer": opt_meta,
                 "loss_clamp": self._clamp(), "model": meta, "lr_scale": self.lr_scale}
        try:
            path = write_checkpoint(self.run_dir, self.step, files, state)
        except OSError as e:
            newest = list_checkpoints(self.run_dir)
            kept = f"; {newest[0].name} is intact" if newest else ""
            reason = e.strerror or e
            raise UserError(f"could not write checkpoint {self.step} in {self.run_dir}: {reason}{kept}") from None
        prune_checkpoints(self.run_dir, self.cfg.keep_ckpts)
        return path

    def _clamp(self) -> float | None:
        value = self.process.loss_clamp(self.step)
        return None if value == math.inf else value

    def write_grid(self, path: Path) -> None:
        noise = SeededNoise(range(self.cfg.grid_images))
        x = noise.randn(self.data.shape, self.dist.device)
        with torch.autocast(self.dist.device.type, torch.bfloat16, enabled=self.bf16):
            out = sample(self.ema.model, x, sampler=self.cfg.grid_sampler, nfe=self.cfg.grid_nfe, noise_fn=noise)
        save_samples(out, path, reference=self.data.x[:4000] if self.data.kind == "points" else None)

    # -- the loop --------------------------------------------------------------------------------------------------
    def train_step(self) -> tuple[Tensor, Tensor]:
        cfg, world, rank = self.cfg, self.dist.world_size, self.dist.rank
        for g in self.opt.param_groups:
            g["lr"] = self.lr_scale * cfg.lr * min((self.step + 1) / max(cfg.lr_warmup, 1), 1.0)
        batch = draw_batch(self.train_data, cfg, self.process, self.gen)
        chunk = cfg.batch // (world * cfg.accum)
        total = torch.zeros((), device=self.dist.device)
        self.opt.zero_grad(set_to_none=True)
        for j in range(cfg.accum):
            rows = slice((rank * cfg.accum + j) * chunk, (rank * cfg.accum + j + 1) * chunk)
            part = Batch(batch.x0[rows], batch.sigma[rows], batch.noise[rows])
            sync = j == cfg.accum - 1 or world == 1
            ctx = contextlib.nullcontext() if sync else self.ddp.no_sync()
            with ctx, torch.autocast(self.dist.device.type, torch.bfloat16, enabled=self.bf16):
                loss = self.process.training_loss(self.ddp, part.x0, part.sigma, part.noise, self.step)
            (loss / cfg.accum).backward()
            total += loss.detach() / cfg.accum
        self.step += 1
        bad = guarded_update(self.model, self.opt, self.ema, total, cfg.grad_clip,
                             ema_beta(cfg.batch, self.step * cfg.batch, cfg.ema_halflife_kimg, cfg.ema_rampup))
        return torch.where(bad > 0, torch.zeros_like(total), total), bad

    def on_faults(self, n_bad: int) -> bool:
        """``cfg.fault_limit`` non-finite steps in a row: roll back to the newest valid checkpoint with half the
        learning rate, or abort, as ``cfg.on_faults`` says."""
        if n_bad < self.cfg.fault_limit:
            return False
        where = f"{n_bad} non-finite steps before step {self.step}"
        if self.cfg.on_faults == "abort" or self.rollbacks >= self.cfg.max_rollbacks:
            raise UserError(f"training diverged ({where}); lower --lr or set --grad-clip, then --resume")
        if not list_checkpoints(self.run_dir):
            raise UserError(f"training diverged ({where}) before the first checkpoint; lower --lr or set --grad-clip")
        ckpt = self._load_newest_valid()
        self.rollbacks += 1
        self.lr_scale *= 0.5
        print(f"warning: {where}; rolled back to {ckpt.name} with learning rate x{self.lr_scale:g}", file=sys.stderr)
        return True

    def at_checkpoint(self) -> None:
        self.last_ckpt = self.save_checkpoint()
        self.write_grid(self.run_dir / "samples.png")

    def run(self) -> Path:
        self.last_ckpt = None
        self.run_loop()
        return self.last_ckpt or self.run_dir


def train(cfg: TrainConfig, resume: bool = False, quiet: bool = False) -> Path:
    """Train to ``cfg.steps``; returns the last checkpoint directory written."""
    return run_and_close(lambda: Trainer(cfg, resume=resume, quiet=quiet))
