"""``fastdiffusion train``: the training loop (Adam, lr warm-up, EMA, bf16 autocast, accumulation, DDP, resume).

Every random draw of a step (examples, flips, noise levels, noise, label dropout) is made for the *global* batch from
generators that all ranks hold in the same state, and each rank takes its rows. So a run gives the same updates
whatever the number of GPUs or accumulation rounds (up to float summation order), and a resumed run continues the
exact random stream. The examples' indices are drawn on the host where the data is (``data.loader``): on a CPU run
that gathers its batches in the training process from the step generator itself, otherwise from a CPU generator of
their own whose position the checkpoint stores with the others. The data stays on the host as stored (uint8 images,
memory-mapped or decoded from files by DataLoader workers); each step moves only its rows to the device.
"""

from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
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
from ..data import Dataset, Fetched, load_dataset, random_hflip, uint8_to_float
from ..data.loader import BatchLoader, auto_workers
from ..errors import UserError
from ..fastpath import CompileRule, FastPath, cache_is_warm, compile_key, mark_warm, module_count, use_compile_cache
from ..models import ProcessModel, load_model, model_meta
from ..nets import build_net, net_config
from ..plots import save_samples
from ..processes import Process, make_process
from ..sampling import sample
from ..seeds import SeededNoise
from . import distributed
from .config import DEFAULT_LABEL_DROPOUT, RESUME_KEYS, TrainConfig, with_overrides
from .ema import EMA, ema_beta
from .lock import RunLock
from .steploop import StepLoop, guarded_update, load_optimizer, optimizer_tensors, run_and_close, truncate_log

# Seed offset of the examples' own index generator: its stream must not repeat the step generator's (same seed).
INDEX_SEED_OFFSET = 0x1D5EED


@dataclass
class Batch:
    """This rank's rows of one step's global random draws."""

    x0: Tensor
    sigma: Tensor
    noise: Tensor
    labels: Tensor | None = None  # one-hot (n, K); all-zero rows where the label was dropped

    def rows(self, rows: slice) -> Batch:
        return Batch(self.x0[rows], self.sigma[rows], self.noise[rows],
                     None if self.labels is None else self.labels[rows])


def _layout(x: Tensor) -> torch.memory_format:
    channels_last = x.ndim == 4 and x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


def draw_batch(fetched: Fetched, cfg: TrainConfig, process: Process, gen: torch.Generator, rows: slice = slice(None),
               label_dim: int = 0, channels_last: bool = False) -> Batch:
    """This rank's ``rows`` of a step's draws for the global batch of ``cfg.batch``, after its examples (``fetched``,
    whose indices the loader drew): the examples on ``gen``'s device with optional flips, sigma ~ the process's
    training density, noise, and with ``label_dim`` the one-hot labels with dropout. Each draw is made from ``gen`` for
    the whole global batch, then sliced."""
    x0 = fetched.x.to(gen.device, non_blocking=True)
    if x0.dtype == torch.uint8:
        x0 = uint8_to_float(x0)
    if channels_last and x0.ndim == 4 and x0.shape[1] > 1:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    if cfg.xflip and x0.ndim == 4:
        x0 = random_hflip(x0, gen, rows, cfg.batch)
    sigma = process.sample_sigma(cfg.batch, gen)[rows]
    noise = torch.randn(process.noise_shape((cfg.batch, *x0.shape[1:])), generator=gen, device=gen.device)[rows]
    noise = noise.contiguous(memory_format=_layout(x0))
    labels = None
    if label_dim:
        keep = torch.rand(cfg.batch, generator=gen, device=gen.device)[rows] >= cfg.label_dropout
        labels = F.one_hot(fetched.labels.to(gen.device, non_blocking=True), label_dim).float() * keep[:, None]
    return Batch(x0, sigma, noise, labels)


def with_labels(cfg: TrainConfig, data: Dataset) -> TrainConfig:
    """``cfg`` for ``data``: with ``--cond``, the network's ``label_dim`` is the data's class count and the label
    dropout defaults to EDM's 0.1."""
    if not cfg.cond:
        return cfg
    if data.labels is None:
        raise UserError(f"--cond: data '{cfg.data}' has no class labels; use bundled digits, a folder of class "
                        f"folders, a zip with EDM's dataset.json labels (`fastdiffusion dataset`) or an .npz with a "
                        f"'labels' array, or drop --cond")
    k, given = data.labels.num_classes, cfg.net_options.get("label_dim")
    if given is not None and given != k:
        raise UserError(f"--net-opt label_dim={given}, but data '{cfg.data}' has {k} classes: drop label_dim "
                        f"(--cond sets it from the data)")
    dropout = DEFAULT_LABEL_DROPOUT if cfg.label_dropout is None else cfg.label_dropout
    return with_overrides(cfg, {"net_options": {"label_dim": k}, "label_dropout": dropout})


def _net_config_for(cfg: TrainConfig, data: Dataset, process: Process) -> dict:
    groups = process.state_groups  # PSLD's network sees and predicts (x, m): 2C channels
    if data.kind == "points":
        arch = "mlp" if cfg.net.startswith("ddpmpp") or cfg.net.startswith("ncsnpp") else cfg.net
        return net_config(arch, in_channels=groups * data.shape[0], **cfg.net_options)
    c, h, w = data.shape
    if h != w:
        raise UserError(f"data '{cfg.data}' has {w}x{h} (WxH) images: the U-Nets need square images; make a square "
                        f"set with `fastdiffusion dataset {cfg.data} square.zip --resolution {min(h, w)}`")
    return net_config(cfg.net, img_resolution=h, in_channels=groups * c, out_channels=groups * c, **cfg.net_options)


def _check_resume_config(ckpt: Path, saved: dict, cfg: TrainConfig) -> None:
    for key in RESUME_KEYS:
        mine = cfg.to_json()[key]
        theirs = saved.get(key)
        if isinstance(mine, tuple):
            mine = list(mine)
        if theirs != mine:
            raise UserError(f"{ckpt}: was trained with {key}={theirs!r}, this run asks {key}={mine!r}; "
                            f"use the same setting or a new --run-dir")


class Trainer(StepLoop):
    """Holds the state of one training run; ``run()`` trains to ``cfg.steps``."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, quiet: bool = False) -> None:
        cfg.validate()
        self.quiet = quiet
        self.run_dir = Path(cfg.run_dir)
        if resume and not (self.run_dir / "config.json").is_file() and not list_checkpoints(self.run_dir):
            what = "does not exist" if not self.run_dir.exists() else "holds no run"
            raise UserError(f"--resume: {self.run_dir} {what}; start the run without --resume, or name its --run-dir")
        self.dist = distributed.setup(cfg.device)
        dev, world, rank = self.dist.device, self.dist.world_size, self.dist.rank
        if cfg.batch % (world * cfg.accum):
            raise UserError(f"--batch {cfg.batch} must divide evenly over {world} process(es) "
                            f"x {cfg.accum} accumulation round(s)")
        self.data = load_dataset(cfg.data, split=cfg.data_split)
        self.cfg = cfg = with_labels(cfg, self.data)
        self.label_dim = int(cfg.net_options.get("label_dim", 0))
        self.process = make_process(cfg.process, **cfg.process_options)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        ncfg = _net_config_for(cfg, self.data, self.process)
        self.model = ProcessModel(build_net(**ncfg), self.process, ncfg, self.data.shape).to(dev)
        self.fast = FastPath.resolve(dev, precision=cfg.precision, channels_last=cfg.channels_last,
                                     compile=cfg.compile, cudnn_benchmark=cfg.cudnn_benchmark,
                                     image=self.data.kind == "image")
        self.fast.apply_backend()
        self.bf16, self.channels_last = self.fast.bf16, self.fast.channels_last
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.ema = EMA(self.model)
        # Fused Adam skips a step on device when ``found_inf`` is set: non-finite steps cost no host sync.
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=cfg.adam_betas, fused=True)
        self.gen = torch.Generator(dev).manual_seed(cfg.seed)
        workers = cfg.loader_workers
        if workers is None:
            workers = auto_workers(world) if self.data.storage == "image files" else 0
        # A CPU run gathering in this process draws the indices from the step generator itself (one stream, in the
        # order of the draws); otherwise they have a CPU generator of their own, drawn ahead by the workers and with
        # no GPU sync.
        shared = dev.type == "cpu" and workers == 0
        self.index_gen = self.gen if shared else torch.Generator().manual_seed(cfg.seed + INDEX_SEED_OFFSET)
        per_rank = cfg.batch // world
        self.loader = BatchLoader(self.data.samples, cfg.batch, slice(rank * per_rank, (rank + 1) * per_rank),
                                  self.index_gen, workers=workers, pin_memory=dev.type == "cuda")
        self.step = 0
        self.lr_scale = 1.0  # lowered by each roll-back after repeated non-finite steps
        self.rollbacks = 0
        self._rng: dict[str, Tensor] | None = None
        self.lock: RunLock | None = None
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
        if cfg.init_from and self.step == 0:
            self._init_from(cfg.init_from)
        torch.manual_seed(cfg.seed + 1000 * self.dist.rank + self.step)  # dropout stream, per rank
        if self._rng is not None:
            torch.set_rng_state(self._rng["rng.torch"])
        self.ddp = self.model
        if self.dist.world_size > 1:
            bucket = {} if cfg.ddp_bucket_mb is None else {"bucket_cap_mb": cfg.ddp_bucket_mb}
            # Gradients as views into the buckets: no copy of every gradient into its bucket before the all-reduce.
            self.ddp = DistributedDataParallel(self.model, device_ids=[dev] if dev.type == "cuda" else None,
                                               gradient_as_bucket_view=True, **bucket)
        self.compile_rule: CompileRule | None = None
        self.compiling = False  # the next step is the first compiled one
        if self.fast.compile and cfg.compile is None:  # automatic: compiled once the remaining steps pay for it
            self.compile_rule = CompileRule(cfg.steps - self.step, dev, module_count(self.model.net), training=True)
        elif self.fast.compile:
            self._compile()
        if self.dist.is_main:
            atomic_write_json(self.run_dir / "config.json", cfg.to_json())
            if not self.quiet:
                self._announce()

    def _announce(self) -> None:
        """The start-up line (run dir, parameters, data), and a warning for a run that ends inside its warm-up."""
        cfg = self.cfg
        params = sum(p.numel() for p in self.model.net.parameters())
        cond = f", {self.label_dim} classes" if self.label_dim else ""
        print(f"train: {self.run_dir} | {cfg.net} {params / 1e6:.2f}M parameters{cond} | {cfg.process} | data "
              f"{self.data.name} ({cfg.data_split}): {self.data.describe()} | {self.dist.device}"
              + (f" x {self.dist.world_size}" if self.dist.world_size > 1 else ""))
        if cfg.steps < cfg.lr_warmup:
            print(f"warning: --steps {cfg.steps} < --lr-warmup {cfg.lr_warmup}: the run ends at "
                  f"{cfg.steps / cfg.lr_warmup:.0%} of its learning rate", file=sys.stderr)

    def _init_from(self, path: str) -> None:
        """Start from another model's EMA weights (EDM's ``--transfer``); tensors it lacks keep their initialisation."""
        theirs = load_model(path).net.state_dict()
        mine = self.model.net.state_dict()
        for key, value in theirs.items():
            if key in mine and value.shape != mine[key].shape:
                raise UserError(f"--init-from {path}: its {key} is {tuple(value.shape)}, this run's network has "
                                f"{tuple(mine[key].shape)}; use the same --net and data shape")
        shared = {k: v for k, v in theirs.items() if k in mine}
        if not shared:
            raise UserError(f"--init-from {path}: shares no weights with this run's --net {self.cfg.net}")
        self.model.net.load_state_dict(shared, strict=False)
        self.ema.model.net.load_state_dict(self.model.net.state_dict())
        if len(shared) < len(mine) and self.dist.is_main and not self.quiet:
            print(f"init-from {path}: {len(mine) - len(shared)} of {len(mine)} tensors are not in it and keep their "
                  f"initialisation")

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def _resume(self) -> None:
        if self.dist.is_main:
            clean_partial(self.run_dir)
        if not list_checkpoints(self.run_dir):
            if self.dist.is_main:
                truncate_log(self.run_dir / "log.jsonl", 0)
                if not self.quiet:
                    print(f"no checkpoint in {self.run_dir}: starting from step 0")
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
        own = self.index_gen is not self.gen
        if own != ("rng.index_generator" in opt_t):
            how = {True: "on a GPU or with --loader-workers >= 1", False: "on the CPU with --loader-workers 0"}
            raise UserError(f"{ckpt}: drew its examples {how[not own]}, this run would draw them {how[own]}; resume "
                            f"it the same way to continue its random stream")
        self.loader.restart(opt_t.get("rng.index_generator"))
        if "rng.cuda" in opt_t and self.dist.device.type == "cuda":
            torch.cuda.set_rng_state(opt_t["rng.cuda"])
        self._rng = opt_t
        self.step = state["step"]
        self.lr_scale = state.get("lr_scale", 1.0)

    def _rng_tensors(self) -> dict[str, Tensor]:
        out = {"rng.step_generator": self.gen.get_state(), "rng.torch": torch.get_rng_state()}
        if self.index_gen is not self.gen:
            out["rng.index_generator"] = self.loader.position()
        if torch.cuda.is_available():
            out["rng.cuda"] = torch.cuda.get_rng_state()
        return out

    def model_meta(self) -> dict:
        """The model files' description: ``model_meta`` and the data it was trained on (spec, split, classes)."""
        labels = self.data.labels if self.label_dim else None
        return {**model_meta(self.model), "data": {"spec": self.cfg.data, "split": self.cfg.data_split,
                                                   "num_classes": self.label_dim,
                                                   "class_names": None if labels is None else labels.names}}

    def save_checkpoint(self) -> Path:
        meta = self.model_meta()
        opt_t, opt_meta = optimizer_tensors(self.opt)
        files = {
            "model.safetensors": (state_dict_cpu(self.model.net), meta),
            "ema.safetensors": (state_dict_cpu(self.ema.model.net), meta),
            "optimizer.safetensors": ({**opt_t, **self._rng_tensors()}, {}),
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
        """The EMA model's samples for seeds 0..grid_images-1 (a conditional model: class = seed mod K)."""
        seeds = range(self.cfg.grid_images)
        noise = SeededNoise(seeds)
        x = noise.randn(self.data.shape, self.dist.device)
        labels = torch.tensor(seeds, device=self.dist.device) % self.label_dim if self.label_dim else None
        with torch.autocast(self.dist.device.type, torch.bfloat16, enabled=self.bf16):
            out = sample(self.ema.model, x, sampler=self.cfg.grid_sampler, nfe=self.cfg.grid_nfe, noise_fn=noise,
                         class_labels=labels)
        save_samples(out, path, reference=self.data.x[:4000] if self.data.kind == "points" else None)

    # -- the loop --------------------------------------------------------------------------------------------------
    def _compile(self) -> None:
        use_compile_cache()
        self.ddp = torch.compile(self.ddp, options=self.cfg.compile_options or None)
        self.compiling = True

    def _compile_key(self) -> str:
        cfg, world = self.cfg, self.dist.world_size
        chunk = (cfg.batch // world // cfg.accum, *self.data.shape)
        return compile_key(self.model, self.dist.device, "training", chunk, self.label_dim, self.fast, world,
                           cfg.process, cfg.process_options, cfg.compile_options)

    def _follow_compile_rule(self, rule: CompileRule) -> None:
        """After an eager step of a run that compiles automatically: compile for the rest of the run once the rule
        decides that it pays (every rank follows rank 0, whose timing may differ)."""
        decision = rule.decide(lambda: cache_is_warm(self._compile_key()))
        if decision.compile is None:
            return
        self.compile_rule, compile_now = None, decision.compile
        if self.dist.world_size > 1:
            flag = torch.tensor(float(compile_now), device=self.dist.device)
            dist.broadcast(flag, 0)
            compile_now = bool(flag.item())
        if self.dist.is_main and not self.quiet:
            tqdm.write(f"compile: {'on' if compile_now else 'off'}: {decision.why}")
        if compile_now:
            self._compile()

    def train_step(self) -> tuple[Tensor, Tensor]:
        cfg, world = self.cfg, self.dist.world_size
        rule, compiling = self.compile_rule, self.compiling
        if compiling and self.bar is not None:
            self.bar.set_postfix_str("compiling")
        if rule is not None:
            rule.start()
        for g in self.opt.param_groups:
            g["lr"] = self.lr_scale * cfg.lr * min((self.step + 1) / max(cfg.lr_warmup, 1), 1.0)
        per_rank = cfg.batch // world
        rows = slice(self.dist.rank * per_rank, (self.dist.rank + 1) * per_rank)
        batch = draw_batch(self.loader.next(), cfg, self.process, self.gen, rows, self.label_dim, self.channels_last)
        chunk = per_rank // cfg.accum
        total = torch.zeros((), device=self.dist.device)
        self.opt.zero_grad(set_to_none=True)
        for j in range(cfg.accum):
            part = batch.rows(slice(j * chunk, (j + 1) * chunk))
            sync = j == cfg.accum - 1 or world == 1
            ctx = contextlib.nullcontext() if sync else self.ddp.no_sync()
            # An unconditional step calls the loss as before, without labels.
            labels = {} if part.labels is None else {"class_labels": part.labels}
            with ctx, torch.autocast(self.dist.device.type, torch.bfloat16, enabled=self.bf16):
                loss = self.process.training_loss(self.ddp, part.x0, part.sigma, part.noise, self.step, **labels)
            (loss / cfg.accum).backward()
            total += loss.detach() / cfg.accum
        self.step += 1
        bad = guarded_update(self.model, self.opt, self.ema, total, cfg.grad_clip,
                             ema_beta(cfg.batch, self.step * cfg.batch, cfg.ema_halflife_kimg, cfg.ema_rampup))
        if rule is not None:
            rule.stop()
            self._follow_compile_rule(rule)
        if compiling:
            self.compiling = False
            mark_warm(self._compile_key())
            if self.bar is not None:
                self.bar.set_postfix_str("")
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
        """Checkpoint, then its sample grid ``samples-NNNNNNNN.png``, copied to ``samples.png`` (the latest)."""
        self.last_ckpt = self.save_checkpoint()
        grid = self.run_dir / f"samples-{self.step:08d}.png"
        self.write_grid(grid)
        atomic_write_bytes(self.run_dir / "samples.png", grid.read_bytes())
        self.run_log.image("samples", grid, self.step)

    def run(self) -> Path:
        self.last_ckpt = None
        self.run_loop()
        return self.last_ckpt or self.run_dir

    def close(self) -> None:
        self.loader.close()
        super().close()


def train(cfg: TrainConfig, resume: bool = False, quiet: bool = False) -> Path:
    """Train to ``cfg.steps``; returns the last checkpoint directory written."""
    return run_and_close(lambda: Trainer(cfg, resume=resume, quiet=quiet))
