"""The step / log / checkpoint cadence that training and distillation share, with the pieces of a step both use: the
guarded (fused) Adam update, the optimizer state as checkpoint tensors, and the log's truncation on resume."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm.auto import tqdm

from ..checkpoint import atomic_write_bytes
from ..plots import plot_loss
from . import distributed
from .ema import EMA
from .logger import RunLog


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


class StepLoop:
    """The step / log / checkpoint cadence shared by training and distillation.

    A subclass sets ``cfg`` (steps, log_every, ckpt_every, batch, logger), ``dist``, ``run_dir``, ``opt``, ``step``,
    ``quiet`` and ``lock``, and defines ``train_step() -> (loss, skipped)`` (device tensors: no host sync) and
    ``at_checkpoint()`` (main rank). ``on_faults(n)`` may roll the state back after ``n`` skipped steps in a row.
    """

    desc = "train"
    rate_key = "img_per_s"
    fault_run = 0  # non-finite steps since the last log interval without any
    run_log: RunLog | None = None  # the main rank's, while the loop runs
    bar: tqdm | None = None  # the progress bar, while the loop runs

    def on_faults(self, n_bad: int) -> bool:
        """Handle ``n_bad`` non-finite steps in a row; True if the state was rolled back."""
        return False

    def _log(self, row: dict) -> None:
        self.run_log.write(row)

    def run_loop(self) -> None:
        cfg, main = self.cfg, self.dist.is_main
        if main:
            self.run_log = RunLog(self.run_dir, cfg.logger, self.step)
        bar = self.bar = tqdm(total=cfg.steps, initial=self.step, desc=self.desc, disable=self.quiet or not main,
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
        if self.run_log is not None:
            self.run_log.close()
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
