"""diffusers ``UNet2DModel`` pipelines as models: the UNet becomes the network of a ``DiscreteVP`` process built from
the pipeline's scheduler config (betas and prediction type), so ``model(x, sigma)`` is k-diffusion's discrete-time
denoiser of it (docs/models.md). Needs the optional ``diffusers`` package (``pip install 'fastdiffusion[diffusers]'``);
weights are read from safetensors, or from a ``.bin`` through the restricted unpickler."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from torch import Tensor, nn

from ..errors import UserError
from ..processes import DiscreteVP
from ..processes.discrete_vp import ddpm_alphas_cumprod
from .model import ProcessModel
from .safe_pickle import load_torch_zip

__all__ = ["DIFFUSERS_ARCH", "DiffusersUNet", "diffusers_weights", "is_diffusers_weights", "load_diffusers"]

DIFFUSERS_ARCH = "diffusers-unet2d"
WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
# Schedulers of the discrete DDPM family: their config holds the training schedule in the same fields.
SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler",
              "DPMSolverSinglestepScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
              "HeunDiscreteScheduler", "LMSDiscreteScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler")
# diffusers' DDPMScheduler defaults, for a unet/ folder without a pipeline around it.
DEFAULT_SCHEDULER = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 1e-4,
                     "beta_end": 0.02, "beta_schedule": "linear", "prediction_type": "epsilon"}


class DiffusersUNet(nn.Module):
    """A ``UNet2DModel`` as ``F(x, t, class_labels)``: one-hot labels become the class indices its embedding takes,
    and of a learned-variance output (2C channels) the first C, the prediction, are kept."""

    def __init__(self, unet: nn.Module, channels: int) -> None:
        super().__init__()
        self.unet, self.channels = unet, channels

    def forward(self, x: Tensor, c_noise: Tensor, class_labels: Tensor | None = None) -> Tensor:
        if class_labels is not None and class_labels.ndim == 2:
            class_labels = class_labels.argmax(1)
        out = self.unet(x, c_noise.reshape(-1).expand(x.shape[0]), class_labels=class_labels).sample
        return out[:, : self.channels]


def diffusers_weights(folder: Path) -> Path | None:
    """The UNet weights file of a diffusers pipeline folder (``model_index.json``, ``unet/``) or of its ``unet/``
    folder; None if ``folder`` is neither."""
    unet = folder / "unet" if (folder / "model_index.json").is_file() else folder
    if not (unet / "config.json").is_file():
        return None
    for name in WEIGHTS:
        if (unet / name).is_file():
            return unet / name
    if folder != unet:
        raise UserError(f"{unet}: no {' or '.join(WEIGHTS)} in this diffusers pipeline's unet folder")
    return None


def is_diffusers_weights(file: Path) -> bool:
    return file.name in WEIGHTS and (file.parent / "config.json").is_file()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable diffusers config ({e})") from None


def scheduler_process(cfg: dict, where: str) -> DiscreteVP:
    """The ``DiscreteVP`` of a DDPM-family scheduler config (``trained_betas`` or ``beta_schedule``)."""
    if cfg.get("_class_name") not in SCHEDULERS:
        raise UserError(f"{where}: scheduler {cfg.get('_class_name')!r} is not a discrete DDPM-family scheduler; "
                        f"supported: {', '.join(SCHEDULERS)}")
    if cfg.get("rescale_betas_zero_snr"):
        raise UserError(f"{where}: rescale_betas_zero_snr gives sigma_max = infinity, which sigma-space samplers "
                        f"cannot start from")
    alphas_cumprod = ddpm_alphas_cumprod(cfg.get("beta_schedule", "linear"), int(cfg.get("num_train_timesteps", 1000)),
                                         float(cfg.get("beta_start", 1e-4)), float(cfg.get("beta_end", 0.02)),
                                         cfg.get("trained_betas"))
    return DiscreteVP(alphas_cumprod, cfg.get("prediction_type", "epsilon"))


def load_diffusers(weights: Path) -> ProcessModel:
    """A ``UNet2DModel`` from its weights file (``unet/diffusion_pytorch_model.*``), with the scheduler config beside
    its folder (``../scheduler/scheduler_config.json``; diffusers' DDPMScheduler defaults if there is none)."""
    unet_dir = weights.parent
    cfg = _read_json(unet_dir / "config.json")
    if cfg.get("_class_name") != "UNet2DModel":
        raise UserError(f"{unet_dir}: {cfg.get('_class_name')!r} is not supported; diffusers models are read as "
                        f"UNet2DModel (unconditional or class-conditional)")
    if cfg.get("time_embedding_type", "positional") != "positional":
        raise UserError(f"{unet_dir}: a UNet2DModel with time_embedding_type={cfg['time_embedding_type']!r} is a "
                        f"score-SDE model, not a DDPM timestep network")
    if cfg.get("class_embed_type") is not None:
        raise UserError(f"{unet_dir}: class_embed_type={cfg['class_embed_type']!r} is not supported (class "
                        f"labels are read through num_class_embeds)")
    scheduler_file = unet_dir.parent / "scheduler" / "scheduler_config.json"
    if scheduler_file.is_file():
        sched = _read_json(scheduler_file)
    else:
        print(f"warning: {unet_dir} has no ../scheduler/scheduler_config.json; assuming diffusers' DDPMScheduler "
              f"defaults (linear betas 1e-4..0.02, 1000 steps, epsilon)", file=sys.stderr)
        sched = DEFAULT_SCHEDULER
    process = scheduler_process(sched, str(scheduler_file))
    channels, out_channels = int(cfg.get("in_channels", 3)), int(cfg.get("out_channels", 3))
    learned_variance = sched.get("variance_type") in ("learned", "learned_range") and out_channels == 2 * channels
    if out_channels != channels and not learned_variance:
        raise UserError(f"{unet_dir}: {out_channels} output channels for {channels} input channels")
    try:
        from diffusers import UNet2DModel
    except ImportError:
        raise UserError(f"{unet_dir} is a diffusers model: install diffusers (pip install "
                        f"'fastdiffusion[diffusers]')") from None
    if weights.suffix == ".safetensors":
        unet = UNet2DModel.from_pretrained(unet_dir, use_safetensors=True, low_cpu_mem_usage=False)
    else:
        unet = UNet2DModel.from_config(cfg)
        try:
            unet.load_state_dict(load_torch_zip(weights))
        except RuntimeError as e:
            first = str(e).splitlines()[1].strip()
            raise UserError(f"{weights}: the tensors do not fit its config ({first})") from None
    size = unet.config.sample_size
    height, width = (size, size) if isinstance(size, int) else size
    net_cfg = {"arch": DIFFUSERS_ARCH, "in_channels": channels, "out_channels": channels,
               "label_dim": int(cfg.get("num_class_embeds") or 0),
               "config": {k: v for k, v in cfg.items() if not k.startswith("_")}}
    return ProcessModel(DiffusersUNet(unet, channels), process, net_cfg, (channels, height, width)).eval()
