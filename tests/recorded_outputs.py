"""Outputs that a refactor must not change: every sampler on exact-score mixtures and on tiny trained models, a few
training steps of each process family, and a DSNO student's forward pass.

``python tests/recorded_outputs.py`` (from the repository root, one thread) writes ``tests/data/recorded.safetensors``;
``tests/test_recorded_outputs.py`` recomputes everything and compares.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path

import torch

import fastdiffusion as fd
from fastdiffusion.data.gmm import GaussianMixture
from fastdiffusion.samplers import SAMPLERS

FILE = Path(__file__).parent / "data" / "recorded.safetensors"
N = 8  # rows per sampler run


def _nfe(name: str) -> int:
    """An NFE every sampler can make: 5 for 1-call-per-step EDM samplers and heun, 7 for 2- and 3-call PSLD ones."""
    for nfe in (5, 7, 10, 1):
        try:
            SAMPLERS[name].steps(nfe)
            return nfe
        except fd.UserError:
            continue
    raise AssertionError(name)


def _psld_mixture_eps(mix: GaussianMixture):
    from fastdiffusion.bench.psld_exact import PSLDMixtureEps

    return PSLDMixtureEps(mix, fd.make_process("psld"))


def _run(model, name: str, noise_shape: tuple[int, ...], seed0: int, **kw) -> torch.Tensor:
    seeds = list(range(seed0, seed0 + N))
    noise = fd.SeededNoise(seeds)
    return fd.sample(model, noise.randn(noise_shape, "cpu"), sampler=name, nfe=_nfe(name), noise_fn=noise, **kw)


def exact_score_outputs() -> dict[str, torch.Tensor]:
    """Every EDM-family sampler on its default, Karras and log-SNR grids, and every PSLD sampler, on ring2d."""
    mix = GaussianMixture.ring2d()
    out = {}
    for name, spec in sorted(SAMPLERS.items()):
        if spec.family == "edm":
            for schedule in (None, "karras", "logsnr"):
                out[f"mix/{name}/{schedule or 'default'}"] = _run(mix.denoise, name, (2,), 0, schedule=schedule)
            if name == "heun":
                out["mix/heun/churn"] = _run(mix.denoise, name, (2,), 0, churn=20.0)
        elif spec.family == "psld":
            eps = _psld_mixture_eps(mix)
            out[f"mix/{name}"] = _run(eps, name, (2,), 0, process=eps.process)
    return out


def _digest(t: torch.Tensor) -> torch.Tensor:
    """sha256 of a tensor's bytes as 32 uint8 values (exact, and small enough to commit for a whole network)."""
    return torch.frombuffer(bytearray(hashlib.sha256(t.detach().contiguous().numpy().tobytes()).digest()),
                            dtype=torch.uint8)


def trained_outputs() -> dict[str, torch.Tensor]:
    """Four training steps of ddpmpp-tiny on 8-px digits per process (losses, weight digests), then every sampler of
    the process's family on the trained network."""
    from fastdiffusion.training.config import TrainConfig
    from fastdiffusion.training.loop import Trainer

    out = {}
    for process in ("edm", "fdm-edm", "vp", "psld"):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainConfig(run_dir=tmp, data="digits", process=process, net="ddpmpp-tiny", batch=16, steps=4,
                              lr=1e-3, lr_warmup=2, device="cpu")
            trainer = Trainer(cfg, quiet=True)
            try:
                losses = torch.stack([trainer.train_step()[0] for _ in range(4)])
                model = trainer.model.eval()
                out[f"train/{process}/losses"] = losses
                for key, value in sorted(model.net.state_dict().items()):
                    out[f"train/{process}/weights/{key}"] = _digest(value)
                family = "psld" if process == "psld" else "edm"
                for name, spec in sorted(SAMPLERS.items()):
                    if spec.family == family:
                        out[f"trained/{process}/{name}"] = _run(model, name, model.data_shape, 100)
            finally:
                trainer.close()
    return out


def dsno_outputs() -> dict[str, torch.Tensor]:
    """A freshly initialised DSNO student (EDM process) and its one-call sampler."""
    from fastdiffusion.nets import build_net, net_config

    backbone = net_config("ddpmpp-tiny", img_resolution=8, in_channels=1)
    torch.manual_seed(0)
    meta_net = net_config("dsno", in_channels=1, backbone=backbone, num_times=4, modes=2)
    student = build_net(**meta_net)
    from fastdiffusion import models as model_module

    gen = model_module.build_model({"process": fd.make_process("edm").config(), "net": meta_net,
                                    "data_shape": [1, 8, 8],
                                    "generator": {"sigmas": [0.0, 0.5, 2.0, 10.0],
                                                  "cond_sigmas": [0.002, 0.5, 2.0, 10.0], "sigma_max": 80.0}})
    gen.net.load_state_dict(student.state_dict())
    x = torch.randn(N, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 80.0
    return {"dsno/forward": gen(x), "dsno/sample": _run(gen, "dsno", (1, 8, 8), 200)}


def compute() -> dict[str, torch.Tensor]:
    torch.set_num_threads(1)
    return {**exact_score_outputs(), **trained_outputs(), **dsno_outputs()}


if __name__ == "__main__":
    from safetensors.torch import save_file

    FILE.parent.mkdir(exist_ok=True)
    outputs = {k: v.detach().contiguous() for k, v in compute().items()}
    save_file(outputs, str(FILE), metadata={"torch": torch.__version__,
                                            "cpu_capability": torch.backends.cpu.get_cpu_capability()})
    print(f"{len(outputs)} tensors -> {FILE}", file=sys.stderr)
