"""``fastdiffusion train``: the training loop (Adam, lr warm-up, EMA, bf16 autocast, accumulation, DDP, resume).

Every random draw of a step (examples, flips, noise levels, noise) is made for the *global* batch from one generator
that all ranks share, and each rank takes its rows. So a run gives the same updates whatever the number of GPUs or
accumulation rounds (up to float summation order), and a resumed run continues the exact random stream.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..checkpoint import (
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
from ..denoiser import Denoiser
from ..errors import UserError
from ..model import model_meta
from ..nets import build_net, net_config
from ..plots import plot_loss, save_samples
from ..processes import make_process
from ..sampling import sample
from ..seeds import SeededNoise
from . import distributed
from .config import RESUME_KEYS, TrainConfig
from .ema import EMA, ema_beta


@dataclass
class Batch:
    """One step's global random draws."""

    x0: Tensor
    sigma: Tensor
    noise: Tensor


def draw_batch(data: Tensor, cfg: TrainConfig, process, gen: torch.Generator) -> Batch:
    """Examples (with optional flips), sigma ~ the process's training density, and noise, for the global batch."""
    idx = torch.randint(len(data), (cfg.batch,), generator=gen, device=gen.device)
    x0 = data[idx.to(data.device)].to(gen.device)
    if cfg.xflip and x0.ndim == 4:
        x0 = random_hflip(x0, gen)
    sigma = process.sample_sigma(cfg.batch, gen)
    noise = torch.randn(x0.shape, generator=gen, device=gen.device)
    return Batch(x0, sigma, noise)


def denoising_loss(model, batch: Batch, process, step: int) -> Tensor:
    """Mean over the batch of ``lambda(sigma) * mean_pixels (D(x0 + sigma n; sigma) - x0)^2``."""
    shape = (-1,) + (1,) * (batch.x0.ndim - 1)
    x = batch.x0 + batch.sigma.float().reshape(shape) * batch.noise
    denoised = model(x, batch.sigma)
    weight = process.loss_weight(batch.sigma, step).float()
    per_example = (denoised - batch.x0).square().flatten(1).mean(1)
    return (weight * per_example).mean()


def _net_config_for(cfg: TrainConfig, data: Dataset) -> dict:
    if data.kind == "points":
        arch = "mlp" if cfg.net.startswith("ddpmpp") or cfg.net.startswith("ncsnpp") else cfg.net
        return net_config(arch, in_channels=data.shape[0], **cfg.net_options)
    c, h, w = data.shape
    if h != w:
        raise UserError(f"data '{cfg.data}' has {h}x{w} images: the U-Nets need square images (use --resolution)")
    return net_config(cfg.net, img_resolution=h, in_channels=c, out_channels=c, **cfg.net_options)


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    sd = opt.state_dict()
    tensors = {f"opt.{i}.{k}": v.detach().cpu() for i, s in sd["state"].items() for k, v in s.items()}
    return tensors, {"param_groups": sd["param_groups"]}


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Tensor]] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, i, k = key.split(".", 2)
            state.setdefault(int(i), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _rng_tensors(gen: torch.Generator) -> dict[str, Tensor]:
    out = {"rng.step_generator": gen.get_state(), "rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["rng.cuda"] = torch.cuda.get_rng_state()
    return out


def _check_resume_config(ckpt: Path, saved: dict, cfg: TrainConfig) -> None:
    for key in RESUME_KEYS:
        mine = cfg.to_json()[key]
        theirs = saved.get(key)
        if isinstance(mine, tuple):
            mine = list(mine)
        if theirs != mine:
            raise UserError(f"{ckpt}: was trained with {key}={theirs!r}, this run asks {key}={mine!r}; "
                            f"use the same setting or a new --run-dir")


class Trainer:
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
        self.data = load_dataset(cfg.data)
        self.process = make_process(cfg.process, **cfg.process_options)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        ncfg = _net_config_for(cfg, self.data)
        self.model = Denoiser(build_net(**ncfg), self.process, ncfg, self.data.shape).to(dev)
        self.ema = EMA(self.model)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=cfg.adam_betas,
                                    fused=dev.type == "cuda")
        self.gen = torch.Generator(dev).manual_seed(cfg.seed)
        self.step = 0
        self._rng: dict[str, Tensor] | None = None
        self.bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and dev.type == "cuda")
        self.train_data = self.data.x.to(dev)
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self._resume()
        elif list_checkpoints(self.run_dir):
            raise UserError(f"{self.run_dir} already holds checkpoints: pass --resume to continue, "
                            f"or choose another --run-dir")
        torch.manual_seed(cfg.seed + 1000 * self.dist.rank + self.step)  # dropout stream, per rank
        if self._rng is not None:
            torch.set_rng_state(self._rng["rng.torch"])
        self.ddp = (DistributedDataParallel(self.model, device_ids=[dev] if dev.type == "cuda" else None)
                    if self.dist.world_size > 1 else self.model)
        if self.dist.is_main:
            atomic_write_json(self.run_dir / "config.json", cfg.to_json())

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def _resume(self) -> None:
        if self.dist.is_main:
            clean_partial(self.run_dir)
        ckpts = list_checkpoints(self.run_dir)
        if not ckpts:
            if not self.quiet and self.dist.is_main:
                print(f"no checkpoint in {self.run_dir}: starting from scratch")
            return
        for ckpt in ckpts:
            try:
                state = verify_checkpoint(ckpt)
            except UserError as e:
                print(f"skipping {ckpt.name}: {e}")
                continue
            _check_resume_config(ckpt, state.get("config", {}), self.cfg)
            weights, _ = read_weights(ckpt / "model.safetensors")
            ema_w, _ = read_weights(ckpt / "ema.safetensors")
            opt_t, _ = read_weights(ckpt / "optimizer.safetensors")
            self.model.net.load_state_dict(weights)
            self.ema.model.net.load_state_dict(ema_w)
            _load_optimizer(self.opt, opt_t, state["optimizer"])
            self.gen.set_state(opt_t["rng.step_generator"])
            if "rng.cuda" in opt_t and self.dist.device.type == "cuda":
                torch.cuda.set_rng_state(opt_t["rng.cuda"])
            self._rng = opt_t
            self.step = state["step"]
            if not self.quiet and self.dist.is_main:
                print(f"resuming from {ckpt} (step {self.step})")
            return
        raise UserError(f"{self.run_dir}: no valid checkpoint to resume from (all failed their checks)")

    def save_checkpoint(self) -> Path:
        meta = model_meta(self.model)
        opt_t, opt_meta = _optimizer_tensors(self.opt)
        files = {
            "model.safetensors": (state_dict_cpu(self.model.net), meta),
            "ema.safetensors": (state_dict_cpu(self.ema.model.net), meta),
            "optimizer.safetensors": ({**opt_t, **_rng_tensors(self.gen)}, {}),
        }
        state = {"config": self.cfg.to_json(), "images_seen": self.step * self.cfg.batch, "optimizer": opt_meta,
                 "loss_clamp": self._clamp(), "model": meta}
        path = write_checkpoint(self.run_dir, self.step, files, state)
        prune_checkpoints(self.run_dir, self.cfg.keep_ckpts)
        return path

    def _clamp(self) -> float | None:
        clamp = getattr(self.process, "loss_clamp", None)
        value = clamp(self.step) if clamp else None
        return value if value is None or value != float("inf") else None

    def write_grid(self, path: Path) -> None:
        noise = SeededNoise(range(self.cfg.grid_images))
        x = noise.randn(self.data.shape, self.dist.device)
        with torch.autocast(self.dist.device.type, torch.bfloat16, enabled=self.bf16):
            out = sample(self.ema.model, x, sampler=self.cfg.grid_sampler, nfe=self.cfg.grid_nfe, noise_fn=noise)
        save_samples(out, path, reference=self.data.x[:4000] if self.data.kind == "points" else None)

    # -- the loop --------------------------------------------------------------------------------------------------
    def train_step(self) -> Tensor:
        cfg, world, rank = self.cfg, self.dist.world_size, self.dist.rank
        for g in self.opt.param_groups:
            g["lr"] = cfg.lr * min((self.step + 1) / max(cfg.lr_warmup, 1), 1.0)
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
                loss = denoising_loss(self.ddp, part, self.process, self.step)
            (loss / cfg.accum).backward()
            total += loss.detach() / cfg.accum
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        self.step += 1
        self.ema.update(self.model, ema_beta(cfg.batch, self.step * cfg.batch, cfg.ema_halflife_kimg,
                                             cfg.ema_rampup))
        return total

    def run(self) -> Path:
        cfg, main = self.cfg, self.dist.is_main
        log_path = self.run_dir / "log.jsonl"
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", disable=self.quiet or not main,
                   dynamic_ncols=True)
        loss_sum = torch.zeros((), device=self.dist.device)
        n_sum, t0, last_ckpt = 0, time.perf_counter(), None
        while self.step < cfg.steps:
            loss_sum += self.train_step()
            n_sum += 1
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                if self.dist.world_size > 1:
                    dist.all_reduce(loss_sum)
                    loss_sum /= self.dist.world_size
                dt = time.perf_counter() - t0
                row = {"step": self.step, "kimg": self.step * cfg.batch / 1000, "loss": loss_sum.item() / n_sum,
                       "lr": self.opt.param_groups[0]["lr"], "img_per_s": n_sum * cfg.batch / max(dt, 1e-9)}
                if main:
                    with open(log_path, "a") as f:
                        f.write(json.dumps(row) + "\n")
                    bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['img_per_s']:.0f}")
                    bar.update(n_sum)
                loss_sum.zero_()
                n_sum, t0 = 0, time.perf_counter()
            if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps:
                if main:
                    last_ckpt = self.save_checkpoint()
                    self.write_grid(self.run_dir / "samples.png")
                    plot_loss(log_path, self.run_dir / "loss.png")
                if self.dist.world_size > 1:
                    dist.barrier()
                t0 = time.perf_counter()
        bar.close()
        return last_ckpt or self.run_dir


def train(cfg: TrainConfig, resume: bool = False, quiet: bool = False) -> Path:
    """Train to ``cfg.steps``; returns the last checkpoint directory written."""
    trainer = Trainer(cfg, resume=resume, quiet=quiet)
    try:
        return trainer.run()
    finally:
        distributed.teardown()
