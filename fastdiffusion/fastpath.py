"""The GPU fast path, with one switch per optimisation; training and sampling resolve their switches here.

- **bf16 autocast** of the network, fp32 master weights (training) and fp32 ODE state (sampling: the process's
  pre/post-conditioning and every solver update stay in fp32; only ``F`` runs in bf16);
- **channels_last** memory for image networks (cuDNN's fast bf16 convolutions are NHWC);
- **cuDNN autotuning** (``torch.backends.cudnn.benchmark``): shapes are fixed, so the one-off search pays;
- **torch.compile**: of the training step's model, and for sampling with **CUDA graphs** (``reduce-overhead``),
  one replay per network call instead of hundreds of kernel launches.

Every switch is ``None`` = automatic unless set: on for a CUDA GPU that supports it, off on the CPU. bf16 needs compute
capability 8.0 (older GPUs fall back to fp32, and a line on stderr says so); torch.compile and CUDA graphs need 7.0
(Triton). Automatic compilation pays for itself: the job runs eagerly, times a call, and compiles only if the time the
compiled network saves on the rest of the job exceeds the compile cost (``CompileRule``, ``decide_compile``,
``CompileCosts``). Compiled code persists across processes in Inductor's cache directory: ``$TORCHINDUCTOR_CACHE_DIR``
if set, else ``$FASTDIFFUSION_CACHE/inductor``, by default ``~/.cache/fastdiffusion/inductor`` (``use_compile_cache``);
a job whose network was compiled there before expects the warm-cache cost.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.torch_version import TorchVersion

from .errors import UserError

if TYPE_CHECKING:
    from tqdm.auto import tqdm

    from .models import ProcessModel

PRECISIONS = ("auto", "fp32", "bf16")
BF16_CAPABILITY = (8, 0)  # Ampere and later: bf16 tensor cores; older GPUs emulate bf16 slowly or not at all
TRITON_CAPABILITY = (7, 0)  # Triton, Inductor's GPU code generator (and so its CUDA graphs), needs Volta or later
CACHE_ENV, DEFAULT_CACHE = "FASTDIFFUSION_CACHE", "~/.cache/fastdiffusion"
WARM_MARKS = "fastdiffusion-compiled"  # under Inductor's cache dir: one empty file per network compiled there
WARMUP_CALLS = 1  # eager calls before the timed one: the first pays cuDNN's algorithm search and memory growth


@dataclass(frozen=True)
class CompileCosts:
    """What compiling a network costs and buys, for ``decide_compile``.

    Measured with ``benchmarks/perf/first_samples.py`` on one GPU: each network runs in a fresh process on the
    sampling fast path (bf16, channels_last, CUDA graphs) eagerly, then compiled, with an empty Inductor cache (cold)
    and again in a new process on the cache it left (warm). The compile cost is the time of the first three compiled
    calls (compile, CUDA-graph warm-up and recording) less three steady compiled calls; the speed-up is the median eager
    over the median compiled call, the smaller of the networks' (``COMPILE_COSTS`` says where its figures come from).
    Costs are a line in the network's module count (a proxy for the ops Dynamo traces) through ddpmpp-small at batch
    64 and ddpmpp-cifar10 at batch 1024. A training step of ddpmpp-small (digits32, batch 64) is measured the same
    way: its speed-up, and its cold compile cost over the sampling network's is ``training_factor`` (forward and
    backward graphs).
    """

    speedup: float  # eager / compiled time of a sampling network call (CUDA graphs)
    training_speedup: float  # eager / compiled time of a training step
    cold_s: float  # compile seconds with an empty cache: cold_s + cold_per_module_s x modules
    cold_per_module_s: float
    warm_s: float  # the same with the cache of an earlier compile of this network (Dynamo still traces)
    warm_per_module_s: float
    training_factor: float  # a training step's compile cost / a sampling call's (forward and backward graphs)

    def compile_s(self, n_modules: int, warm: bool, training: bool = False) -> float:
        """Expected seconds to compile a network of ``n_modules`` modules."""
        base, per = (self.warm_s, self.warm_per_module_s) if warm else (self.cold_s, self.cold_per_module_s)
        return (base + per * n_modules) * (self.training_factor if training else 1.0)


# The costlier of two H100 machines (benchmarks/perf/first_samples.json and first_samples_6011672.json, torch 2.11;
# their compiles differed by 1.4-1.8x): staying eager wrongly costs less than compiling wrongly. Both lines go
# through the origin at the costlier network's rate (two-point fits cross zero and would promise small networks a
# free compile). The sampling speed-up is newer: the eager GroupNorm without copies (nets/unet.py) made the eager
# ddpmpp-cifar10 call at batch 1024 faster, leaving the compiled one 2.27x ahead (throughput_{eager,fast}_3c2c41a.json,
# one H100, one call), against 3.8x before; re-measured 2.28-2.30x in fresh processes (compile_cost_h100_3ebe2ac/),
# where the cold and warm compiles cost 0.197 and 0.025 s per module, below the costlier machine's figures kept here.
COMPILE_COSTS = CompileCosts(speedup=2.27, training_speedup=1.18, cold_s=0.0, cold_per_module_s=0.239, warm_s=0.0,
                             warm_per_module_s=0.0333, training_factor=2.32)


@dataclass(frozen=True)
class CompileDecision:
    """Whether to compile a job's network (None: not yet) and the numbers behind it."""

    compile: bool | None
    why: str
    eager_s: float | None = None  # one eager call (a training step), timed after the warm-up
    calls: int | None = None  # the eager calls weighed: left in the job, or made so far when its length is unknown
    saving_s: float | None = None  # what compiling would save on those calls
    cost_s: float | None = None  # the expected compile cost
    warm_cache: bool | None = None

    def describe(self) -> dict:
        return {"compile": self.compile, "why": self.why, "eager_s": self.eager_s, "calls": self.calls,
                "saving_s": self.saving_s, "cost_s": self.cost_s, "warm_cache": self.warm_cache}


def decide_compile(forced: bool | None, *, eager_s: float | None = None, calls_left: int | None = None,
                   calls_made: int = 0, n_modules: int = 0, warm: bool = False, training: bool = False,
                   costs: CompileCosts | None = None) -> CompileDecision:
    """``forced`` (True / False) wins; automatic (None): once an eager call is timed (``eager_s``), compile when the
    time the compiled network saves on the ``calls_left`` calls of the job exceeds the expected compile cost, else
    stay eager. A job of unknown length (``calls_left`` None) compiles once its ``calls_made`` would have paid, else
    asks again later (the ski-rental rule: never more than twice the time of the better choice in hindsight).
    ``costs``: ``COMPILE_COSTS`` unless given."""
    if forced is not None:
        return CompileDecision(forced, "forced " + ("on" if forced else "off"))
    if eager_s is None:
        return CompileDecision(None, "eager until a call is timed")
    costs = costs or COMPILE_COSTS
    known = calls_left is not None
    calls = calls_left if known else calls_made
    speedup = costs.training_speedup if training else costs.speedup
    saving = calls * eager_s * (1 - 1 / speedup)
    cost = costs.compile_s(n_modules, warm, training)
    pays = saving > cost
    unit = "steps" if training else "calls"
    why = (f"{calls} {unit} {'left' if known else 'made'} x {eager_s:.3g} s eager: compiling (x{speedup:g}) saves "
           f"{saving:.3g} s, {'more' if pays else 'less'} than its ~{cost:.3g} s ({'warm' if warm else 'cold'} cache)")
    return CompileDecision(pays if pays or known else None, why, eager_s, calls, saving, cost, warm)


class CompileRule:
    """``compile=None``: a job's network runs eagerly; the call after the warm-up is timed (the device synchronised
    around it) and ``decide`` weighs it against the job's ``calls`` network calls (training: steps; None: unknown)."""

    def __init__(self, calls: int | None, device: torch.device, n_modules: int, training: bool = False) -> None:
        self.calls, self.device, self.n_modules, self.training = calls, device, n_modules, training
        self.made = 0
        self.eager_s: float | None = None
        self.warm: bool | None = None
        self.decision = decide_compile(None)
        self._t0: float | None = None

    @property
    def pending(self) -> bool:
        return self.decision.compile is None

    def start(self) -> None:
        """Before an eager call."""
        if self.made == WARMUP_CALLS:
            synchronize(self.device)
            self._t0 = time.perf_counter()

    def stop(self) -> None:
        """After an eager call."""
        if self._t0 is not None:
            synchronize(self.device)
            self.eager_s, self._t0 = time.perf_counter() - self._t0, None
        self.made += 1

    def decide(self, warm: Callable[[], bool]) -> CompileDecision:
        """The decision before the next call; ``warm()`` (asked once) says whether the cache holds this network."""
        if self.pending and self.eager_s is not None:
            if self.warm is None:
                self.warm = warm()
            left = None if self.calls is None else max(self.calls - self.made, 0)
            self.decision = decide_compile(None, eager_s=self.eager_s, calls_left=left, calls_made=self.made,
                                           n_modules=self.n_modules, warm=self.warm, training=self.training)
        return self.decision


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def module_count(net: nn.Module) -> int:
    return sum(1 for _ in net.modules())


def sampling_calls(samples: int, batch: int, nfe: int, world: int = 1) -> int:
    """Network calls of sampling ``samples`` in batches of ``batch`` with ``nfe`` calls each, on the busiest of
    ``world`` ranks (a guided call batches its two evaluations); a batch below 1, which sampling refuses, counts 1."""
    return math.ceil(math.ceil(samples / world) / max(batch, 1)) * nfe


def compile_cache_dir() -> Path:
    """Inductor's persistent cache directory: ``$TORCHINDUCTOR_CACHE_DIR`` if set, else
    ``$FASTDIFFUSION_CACHE/inductor`` (default ``~/.cache/fastdiffusion/inductor``)."""
    path = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    return Path(path) if path else Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser() / "inductor"


def use_compile_cache() -> Path:
    """``compile_cache_dir()``, set for this process, with FX-graph and AOT-autograd caching on unless their
    ``TORCHINDUCTOR_*`` variables say otherwise. Only when compiling: it imports Inductor (Dynamo and Triton with it),
    seconds that an eager job should not pay."""
    path = compile_cache_dir()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)  # read by Inductor at each compile, so setting it now is in time
    import torch._inductor.config

    torch._inductor.config.fx_graph_cache = True
    if TorchVersion(torch.__version__) >= (2, 5):  # the AOT-autograd cache (Dynamo still traces) came in 2.5
        import torch._functorch.config

        torch._functorch.config.enable_autograd_cache = True
    return path


def compile_key(net: nn.Module, device: torch.device, *context: object) -> str:
    """What a compiled network's cache entries depend on: torch, the GPU, the modules and tensor shapes, ``context``
    (input shapes, switches, options)."""
    h = hashlib.sha256(f"{torch.__version__}|{device.type}|{repr(net)}|{context!r}".encode())
    if device.type == "cuda":
        h.update(torch.cuda.get_device_name(device).encode())
    for name, t in [*net.named_parameters(), *net.named_buffers()]:
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
    return h.hexdigest()[:32]


def cache_is_warm(key: str) -> bool:
    """Whether a network of ``compile_key`` ``key`` was compiled into the cache directory before (its marker; clearing
    the directory clears it)."""
    return (compile_cache_dir() / WARM_MARKS / key).is_file()


def mark_warm(key: str) -> None:
    """Leave the marker of a compiled network in the cache directory."""
    marks = compile_cache_dir() / WARM_MARKS
    with contextlib.suppress(OSError):  # a read-only cache only makes the next job expect a cold compile
        marks.mkdir(parents=True, exist_ok=True)
        (marks / key).touch()


def gpu_capability(device: torch.device) -> tuple[int, int]:
    """A CUDA ``device``'s compute capability; where CUDA is absent (switches resolved ahead of a run, as tests do) a
    current GPU's."""
    if not torch.cuda.is_available():
        return (9, 0)
    return torch.cuda.get_device_capability(device)


def _dotted(capability: tuple[int, int]) -> str:
    return f"{capability[0]}.{capability[1]}"


@dataclass(frozen=True)
class FastPath:
    bf16: bool
    channels_last: bool
    compile: bool  # forced, or automatic: compiled once ``CompileRule`` says it pays
    cudnn_benchmark: bool

    @classmethod
    def resolve(cls, device: torch.device, *, precision: str = "auto", channels_last: bool | None = None,
                compile: bool | None = None, cudnn_benchmark: bool | None = None, image: bool = True) -> FastPath:
        """The switches for ``device``: each ``None`` / ``"auto"`` is on for a CUDA GPU that supports it (bf16: compute
        capability 8.0, else fp32; compile: 7.0) and off otherwise, the fallback said on stderr; channels_last only
        ever applies to image data."""
        if precision not in PRECISIONS:
            raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
        cuda = device.type == "cuda"
        capability = gpu_capability(device) if cuda else (0, 0)
        bf16_ok, triton_ok = cuda and capability >= BF16_CAPABILITY, cuda and capability >= TRITON_CAPABILITY
        if cuda and compile and not triton_ok:
            raise UserError(f"--compile: torch.compile needs compute capability {_dotted(TRITON_CAPABILITY)} or later "
                            f"(Triton); {torch.cuda.get_device_name(device)} has {_dotted(capability)}")
        fallbacks = []
        if cuda and precision == "auto" and not bf16_ok:
            fallbacks.append(f"fp32, not bf16 (which needs {_dotted(BF16_CAPABILITY)})")
        if cuda and compile is None and not triton_ok:
            fallbacks.append(f"no torch.compile or CUDA graphs (Triton needs {_dotted(TRITON_CAPABILITY)})")
        if fallbacks:
            print(f"fast path: {'; '.join(fallbacks)} on {torch.cuda.get_device_name(device)}, compute capability "
                  f"{_dotted(capability)}", file=sys.stderr)
        return cls(bf16=precision == "bf16" or (precision == "auto" and bf16_ok),
                   channels_last=image and (cuda if channels_last is None else channels_last),
                   compile=triton_ok if compile is None else compile,
                   cudnn_benchmark=cuda if cudnn_benchmark is None else cudnn_benchmark)

    def apply_backend(self) -> None:
        """Process-wide backend flags (cuDNN autotuning)."""
        torch.backends.cudnn.benchmark = self.cudnn_benchmark

    def describe(self) -> dict:
        return {"precision": "bf16" if self.bf16 else "fp32", "channels_last": self.channels_last,
                "compile": self.compile, "cudnn_benchmark": self.cudnn_benchmark}


class SamplingNet(nn.Module):
    """The network ``F`` of a model, run on the fast path for sampling: channels_last input, bf16 autocast, fp32
    output; compiled (with CUDA graphs on a GPU) for a fixed batch: at once, or with a ``rule`` once it says so.

    CUDA graphs need static shapes and reuse their output memory, so a smaller batch (the last one of a run) is padded
    to the first batch seen, and every output is copied out before the next call. Rows never mix in ``F``, so padding
    changes no sample. ``row_cond``: the noise conditioning has one row per sample (not so for a DSNO operator, whose
    conditioning is its M output times). ``progress``: a bar that says 'compiling' during the first compiled call.
    """

    def __init__(self, net: nn.Module, fast: FastPath, device: torch.device, row_cond: bool = True,
                 compile_options: dict | None = None, rule: CompileRule | None = None) -> None:
        super().__init__()
        self.net, self.fast, self.device, self.row_cond = net, fast, device, row_cond
        self.compile_options = compile_options or {}
        self.rule = rule
        self.graphs = self.compiled = self.compiling = False
        self.batch: int | None = None
        self.key: str | None = None  # compile_key, from the first call's shapes
        self.progress: tqdm | None = None
        if fast.compile and rule is None:
            self._compile()

    def _compile(self) -> None:
        use_compile_cache()
        self.graphs = self.device.type == "cuda"
        # In place, so the weights keep their names (no second registered copy of ``net``); triton.cudagraphs is
        # what mode="reduce-overhead" sets, and options and mode cannot be combined.
        self.net.compile(options={"triton.cudagraphs": self.graphs, **self.compile_options}, dynamic=False)
        self.compiled = self.compiling = True

    def _key(self, x: Tensor, c_noise: Tensor, class_labels: Tensor | None) -> str:
        shapes = [(self.batch, *x.shape[1:]), tuple(c_noise.shape[1:]) if self.row_cond else tuple(c_noise.shape),
                  None if class_labels is None else tuple(class_labels.shape[1:])]
        return compile_key(self.net, self.device, "sampling", shapes, self.fast, self.device.type == "cuda",
                           self.compile_options)

    def _status(self, text: str) -> None:
        if self.progress is not None:
            self.progress.set_postfix_str(text)

    def forward(self, x: Tensor, c_noise: Tensor, class_labels: Tensor | None = None) -> Tensor:
        n = x.shape[0]
        self.batch = self.batch or n
        if self.key is None and self.fast.compile:
            self.key = self._key(x, c_noise, class_labels)
        rule = self.rule
        if rule is not None and rule.pending and rule.decide(lambda: cache_is_warm(self.key)).compile:
            self._compile()
        compiling = self.compiling
        if compiling:
            self._status("compiling")
        if self.graphs and n < self.batch:
            x, class_labels = _pad(x, self.batch), _pad(class_labels, self.batch)
            c_noise = _pad(c_noise, self.batch) if self.row_cond else c_noise
        if self.fast.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.graphs:
            torch.compiler.cudagraph_mark_step_begin()  # each call is a new step: earlier outputs were copied out
        timing = rule is not None and rule.pending
        if timing:
            rule.start()
        with torch.autocast(x.device.type, torch.bfloat16, enabled=self.fast.bf16):
            out = self.net(x, c_noise, class_labels)
        if timing:
            rule.stop()
        if compiling:
            self.compiling = False
            mark_warm(self.key)
            self._status("")
        return out[:n].to(torch.float32, copy=self.graphs)

    def describe(self) -> dict:
        """The switches it samples with, ``compile`` saying whether it is compiled now and, with a rule, why."""
        out = {**self.fast.describe(), "compile": self.compiled}
        if self.rule is not None:
            out["compile_decision"] = self.rule.decision.describe()
        return out


def _pad(t: Tensor | None, n: int) -> Tensor | None:
    """``t`` with its first row repeated up to ``n`` rows (None stays None)."""
    if t is None:
        return t
    return torch.cat([t, t[:1].expand(n - t.shape[0], *t.shape[1:])])


def accelerate(model: ProcessModel, device: str | torch.device | None = None, *, precision: str = "auto",
               channels_last: bool | None = None, compile: bool | None = None,
               cudnn_benchmark: bool | None = None, compile_options: dict | None = None,
               calls: int | None = None) -> ProcessModel:
    """Put a loaded model (``load_model``: a denoiser, PSLD model or DSNO generator) on the sampling fast path, in
    place, and return it. The switches default to on for a CUDA GPU that supports them and off on the CPU (see
    ``FastPath``); automatic compilation (``compile=None``) happens once it pays for a job of ``calls`` network calls
    (``sampling_calls``; None: unknown, see ``decide_compile``). ``compile_options`` are Inductor options."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    image = len(model.data_shape) == 3
    fast = FastPath.resolve(device, precision=precision, channels_last=channels_last, compile=compile,
                            cudnn_benchmark=cudnn_benchmark, image=image)
    if isinstance(model.net, SamplingNet):
        raise UserError("this model is already on the fast path (accelerate() was called twice)")
    fast.apply_backend()
    if fast.channels_last:
        model.net.to(memory_format=torch.channels_last)
    rule = CompileRule(calls, device, module_count(model.net)) if compile is None and fast.compile else None
    model.net = SamplingNet(model.net, fast, device, row_cond=model.family != "dsno",
                            compile_options=compile_options, rule=rule)
    return model


def show_compiling(model: Callable, bar: tqdm) -> None:
    """Let ``bar`` say 'compiling' while the network of a fast-path ``model`` compiles."""
    from .models import ProcessModel  # models.files imports this module

    if isinstance(model, ProcessModel) and isinstance(model.net, SamplingNet):
        model.net.progress = bar


def fast_path_of(model: Callable) -> dict:
    """The switches a model samples with, for protocols and result files."""
    from .models import ProcessModel  # models.files imports this module

    if isinstance(model, ProcessModel) and isinstance(model.net, SamplingNet):
        return model.net.describe()
    return {"precision": "fp32", "channels_last": False, "compile": False,
            "cudnn_benchmark": torch.backends.cudnn.benchmark}
