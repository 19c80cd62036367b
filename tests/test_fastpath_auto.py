"""The automatic fast path (issue 21): switches for the GPU in hand (compute capability faked on the CPU), the compile
rule on given timings, Inductor's persistent cache directory, the rule driving a sampling network and a training run,
and the CPU path left as it was."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.torch_version import TorchVersion

import fastdiffusion.fastpath as fastpath
from fastdiffusion.errors import UserError
from fastdiffusion.fastpath import (
    CompileCosts,
    CompileRule,
    FastPath,
    SamplingNet,
    accelerate,
    decide_compile,
    fast_path_of,
    sampling_calls,
    use_compile_cache,
)
from fastdiffusion.models import build_model
from fastdiffusion.nets import net_config
from fastdiffusion.processes import make_process
from fastdiffusion.sampling import sample
from fastdiffusion.seeds import SeededNoise
from fastdiffusion.training.config import TrainConfig
from fastdiffusion.training.loop import Trainer

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
# Exact binary fractions, so that a job can sit exactly on the break-even point: a 20 s cold compile and a 3 s warm one
# for 80 modules, twice as fast compiled; a training step's compile costs 3x and buys 1.5x.
COSTS = CompileCosts(speedup=2.0, training_speedup=1.5, cold_s=10.0, cold_per_module_s=0.125, warm_s=2.0,
                     warm_per_module_s=0.0125, training_factor=3.0)


@pytest.fixture(autouse=True)
def _keep_process_state(monkeypatch, tmp_path):
    """Every test gets its own Inductor cache directory, and cuDNN's process-wide flag back."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    flag = torch.backends.cudnn.benchmark
    yield
    torch.backends.cudnn.benchmark = flag


@pytest.fixture
def fake_gpu(monkeypatch):
    """``fake_gpu(major, minor, name)``: CUDA present with that GPU as far as ``FastPath.resolve`` asks."""

    def make(major: int, minor: int, name: str) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, minor))
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)

    return make


@pytest.fixture
def compile_spy(monkeypatch):
    """torch.compile replaced by a recorder that hands the function back uncompiled."""
    calls = []

    def spy(fn, **kwargs):
        calls.append(kwargs)
        return fn

    monkeypatch.setattr(torch, "compile", spy)
    return calls


@pytest.fixture
def clock(monkeypatch):
    """The rule's clock: it reads ``clock.now``, which each reading moves on by ``clock.tick`` and a network call
    (``auto_net``) by its duration."""
    state = SimpleNamespace(now=0.0, tick=0.0)

    def perf_counter() -> float:
        state.now += state.tick
        return state.now

    monkeypatch.setattr(fastpath, "time", SimpleNamespace(perf_counter=perf_counter))
    return state


# ------------------------------------------------------------------------------- FastPath.resolve, GPU in hand


@pytest.mark.parametrize(("capability", "name", "bf16", "compile", "said"), [
    ((9, 0), "NVIDIA H100 80GB HBM3", True, True, []),
    ((8, 0), "NVIDIA A100-SXM4-40GB", True, True, []),
    ((7, 5), "Tesla T4", False, True, ["fp32, not bf16", "7.5"]),
    ((7, 0), "Tesla V100-SXM2-16GB", False, True, ["fp32, not bf16", "7.0"]),
    ((6, 1), "NVIDIA GeForce GTX 1080", False, False, ["fp32, not bf16", "no torch.compile or CUDA graphs", "6.1"]),
])  # fmt: skip
def test_auto_switches_fit_the_gpu(fake_gpu, capsys, capability, name, bf16, compile, said):
    fake_gpu(*capability, name)
    fast = FastPath.resolve(CUDA)
    assert fast == FastPath(bf16=bf16, channels_last=True, compile=compile, cudnn_benchmark=True)
    err = capsys.readouterr().err
    if said:
        assert err.count("\n") == 1 and name in err and all(s in err for s in said)  # one line, which GPU and why
        assert ("torch.compile" in err) == (not compile)
    else:
        assert err == ""


def test_explicit_switches_override_the_gpu_check(fake_gpu, capsys):
    fake_gpu(7, 5, "Tesla T4")
    assert FastPath.resolve(CUDA, precision="bf16").bf16  # asked for: kept, and nothing to explain
    assert FastPath.resolve(CUDA, precision="fp32", compile=False) == FastPath(False, True, False, True)
    assert capsys.readouterr().err == ""
    fake_gpu(9, 0, "NVIDIA H100")
    assert not FastPath.resolve(CUDA, precision="fp32").bf16


def test_compile_forced_on_a_gpu_triton_cannot_serve_is_a_user_error(fake_gpu, capsys):
    fake_gpu(6, 1, "NVIDIA GeForce GTX 1080")
    with pytest.raises(UserError, match=r"7\.0.*GTX 1080 has 6\.1"):
        FastPath.resolve(CUDA, compile=True)
    fast = FastPath.resolve(CUDA, compile=False)
    assert not fast.compile and "torch.compile" not in capsys.readouterr().err  # compile refused: nothing to explain


def test_the_cpu_asks_nothing_of_cuda_and_stays_all_off(monkeypatch, compile_spy, capsys):
    def no_gpu(*args, **kwargs):
        raise AssertionError("a CPU run asked for a GPU's properties")

    monkeypatch.setattr(torch.cuda, "get_device_capability", no_gpu)
    monkeypatch.setattr(torch.cuda, "get_device_name", no_gpu)
    assert FastPath.resolve(CPU) == FastPath(bf16=False, channels_last=False, compile=False, cudnn_benchmark=False)
    model = accelerate(image_model(), "cpu")
    assert model.net.rule is None and not model.net.compiled
    with torch.no_grad():
        sample(model, SeededNoise(range(2)).randn((3, 8, 8)), sampler="euler", nfe=4)
    assert compile_spy == [] and capsys.readouterr().err == ""
    assert fast_path_of(model) == {"precision": "fp32", "channels_last": False, "compile": False,
                                   "cudnn_benchmark": False}


# ------------------------------------------------------------------------------------------- decide_compile


def test_a_small_job_stays_eager_and_a_big_one_compiles():
    small = decide_compile(None, eager_s=0.125, calls_left=100, n_modules=80, costs=COSTS)
    assert small.compile is False
    assert (small.eager_s, small.calls, small.saving_s, small.cost_s, small.warm_cache) == (0.125, 100, 6.25, 20.0,
                                                                                            False)
    assert "100 calls left" in small.why and "less than" in small.why and "cold cache" in small.why
    big = decide_compile(None, eager_s=0.125, calls_left=1000, n_modules=80, costs=COSTS)
    assert big.compile is True and big.saving_s == 62.5 and "more than" in big.why
    # exactly at break-even (saving = cost = 20 s) compiling buys nothing: eager
    assert decide_compile(None, eager_s=0.125, calls_left=320, n_modules=80, costs=COSTS).compile is False
    assert decide_compile(None, eager_s=0.125, calls_left=321, n_modules=80, costs=COSTS).compile is True


def test_a_warm_cache_lowers_the_threshold():
    cold = decide_compile(None, eager_s=0.125, calls_left=100, n_modules=80, warm=False, costs=COSTS)
    warm = decide_compile(None, eager_s=0.125, calls_left=100, n_modules=80, warm=True, costs=COSTS)
    assert cold.compile is False and warm.compile is True
    assert warm.cost_s == 3.0 and warm.warm_cache is True and "warm cache" in warm.why
    assert COSTS.compile_s(80, warm=True) < COSTS.compile_s(80, warm=False)


def test_forced_choices_win_over_any_timing():
    assert decide_compile(True, eager_s=1e-6, calls_left=1, costs=COSTS).compile is True
    assert decide_compile(False, eager_s=10.0, calls_left=10**6, costs=COSTS).compile is False
    assert decide_compile(True).why == "forced on" and decide_compile(False).why == "forced off"


def test_no_decision_before_a_call_is_timed():
    assert decide_compile(None, eager_s=None, calls_left=10**9, costs=COSTS).compile is None


def test_a_job_of_unknown_length_compiles_once_its_calls_made_would_have_paid():
    assert decide_compile(None, eager_s=0.125, calls_made=320, n_modules=80, costs=COSTS).compile is None  # not yet
    late = decide_compile(None, eager_s=0.125, calls_made=321, n_modules=80, costs=COSTS)
    assert late.compile is True and "321 calls made" in late.why


def test_training_weighs_its_own_speedup_and_compile_cost():
    # 600 steps x 0.25 s: compiled sampling calls would save 75 s > 20 s; compiled steps save 50 s < 60 s
    assert decide_compile(None, eager_s=0.25, calls_left=600, n_modules=80, costs=COSTS).compile is True
    step = decide_compile(None, eager_s=0.25, calls_left=600, n_modules=80, training=True, costs=COSTS)
    assert step.compile is False and step.cost_s == 60.0 and step.saving_s == pytest.approx(50.0)
    assert "600 steps left" in step.why


def test_sampling_calls_count_batches_on_the_busiest_rank():
    assert sampling_calls(64, 256, 35) == 35
    assert sampling_calls(1000, 256, 35) == 4 * 35
    assert sampling_calls(1000, 256, 35, world=2) == 2 * 35  # 500 seeds on rank 0
    assert sampling_calls(1001, 100, 1, world=2) == 6  # rank 0 draws 501
    assert sampling_calls(10, 0, 5) == 50  # a refused batch size does not fail here


# ----------------------------------------------------------------------------------------- the cache directory


def test_an_existing_inductor_cache_dir_is_respected(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "theirs"))
    monkeypatch.setenv("FASTDIFFUSION_CACHE", str(tmp_path / "ours"))
    assert use_compile_cache() == tmp_path / "theirs"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "theirs")


def test_the_cache_dir_defaults_under_fastdiffusion_cache_then_home(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.setenv("FASTDIFFUSION_CACHE", str(tmp_path / "ours"))
    assert use_compile_cache() == tmp_path / "ours" / "inductor"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "ours" / "inductor")  # where Inductor reads it
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.delenv("FASTDIFFUSION_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert use_compile_cache() == tmp_path / "home" / ".cache" / "fastdiffusion" / "inductor"


def test_asking_whether_the_cache_is_warm_does_not_import_inductor(tmp_path):
    """An eager job asks, and must not pay Inductor's import (Dynamo and Triton with it: seconds on a GPU machine)."""
    code = ("import sys; from fastdiffusion.fastpath import cache_is_warm, mark_warm; "
            "assert not cache_is_warm('k'); mark_warm('k'); assert cache_is_warm('k'); "
            "print(sorted(m for m in sys.modules if m.startswith(('torch._inductor', 'torch._dynamo', 'triton'))))")
    env = {**os.environ, "FASTDIFFUSION_CACHE": str(tmp_path)}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert (tmp_path / "inductor" / "fastdiffusion-compiled" / "k").is_file()


@pytest.mark.skipif(TorchVersion(torch.__version__) < (2, 5), reason="the AOT-autograd cache came in torch 2.5")
def test_the_fx_graph_and_aot_autograd_caches_are_turned_on(monkeypatch):
    import torch._functorch.config
    import torch._inductor.config

    monkeypatch.setattr(torch._inductor.config, "fx_graph_cache", False)
    monkeypatch.setattr(torch._functorch.config, "enable_autograd_cache", False)
    use_compile_cache()
    assert torch._inductor.config.fx_graph_cache is True
    assert torch._functorch.config.enable_autograd_cache is True


# ------------------------------------------------------------------------------ the rule on a sampling network


def image_model() -> nn.Module:
    meta = {"process": make_process("edm").config(),
            "net": net_config("ddpmpp-tiny", img_resolution=8, in_channels=3, dropout=0.0), "data_shape": [3, 8, 8]}
    return build_model(meta).eval()


class Bar:
    """Records what a progress bar is told."""

    def __init__(self) -> None:
        self.said: list[str] = []

    def set_postfix_str(self, text: str) -> None:
        self.said.append(text)


def auto_net(calls: int | None, clock: SimpleNamespace, durations: list[float] | None = None
             ) -> tuple[SamplingNet, Bar]:
    """A ddpmpp-tiny network under the automatic rule for a job of ``calls`` calls, as on a GPU (compile allowed);
    its calls take ``durations`` seconds on the ``clock``, then 0.125 s each."""
    durations = list(durations or [])
    net = image_model().net
    net.register_forward_pre_hook(lambda module, args: setattr(clock, "now", clock.now + (
        durations.pop(0) if durations else 0.125)))
    fast = FastPath(bf16=False, channels_last=False, compile=True, cudnn_benchmark=False)
    sn = SamplingNet(net, fast, CPU, rule=CompileRule(calls, CPU, fastpath.module_count(net)))
    sn.progress = Bar()
    return sn, sn.progress


def call(sn: SamplingNet, n: int = 4) -> None:
    with torch.no_grad():
        sn(torch.randn(n, 3, 8, 8), torch.rand(n))


def test_the_rule_times_the_call_after_the_warm_up_and_compiles_a_long_job(monkeypatch, clock, compile_spy):
    monkeypatch.setattr(fastpath, "COMPILE_COSTS", COSTS)
    sn, bar = auto_net(calls=1000, clock=clock, durations=[30.0, 0.125])  # the warm-up call is not timed
    n_modules = fastpath.module_count(sn.net)
    call(sn)
    call(sn)
    assert compile_spy == [] and not sn.compiled and bar.said == [] and sn.rule.eager_s == 0.125
    call(sn)  # decided before it, the third call runs compiled, and the bar says so while it does
    decision = sn.rule.decision
    assert decision.eager_s == 0.125 and decision.calls == 998 and decision.compile is True
    assert decision.cost_s == COSTS.compile_s(n_modules, warm=False)
    assert compile_spy == [{"options": {"triton.cudagraphs": False}, "dynamic": False}]
    assert sn.compiled and bar.said == ["compiling", ""]
    call(sn)
    assert len(compile_spy) == 1 and bar.said == ["compiling", ""]
    described = sn.describe()
    assert described["compile"] is True and described["compile_decision"]["calls"] == 998


def test_the_rule_keeps_a_short_job_eager(monkeypatch, clock, compile_spy):
    monkeypatch.setattr(fastpath, "COMPILE_COSTS", COSTS)
    sn, bar = auto_net(calls=35, clock=clock)
    for _ in range(35):
        call(sn)
    assert compile_spy == [] and bar.said == []
    described = sn.describe()
    assert described["compile"] is False and described["compile_decision"]["compile"] is False
    assert described["compile_decision"]["calls"] == 33


def test_a_job_of_unknown_length_compiles_when_its_calls_have_paid(monkeypatch, clock, compile_spy):
    costs = CompileCosts(speedup=2.0, training_speedup=1.5, cold_s=1.0, cold_per_module_s=0.0, warm_s=0.5,
                         warm_per_module_s=0.0, training_factor=3.0)
    monkeypatch.setattr(fastpath, "COMPILE_COSTS", costs)
    sn, _ = auto_net(calls=None, clock=clock)
    for _ in range(17):  # 16 calls made x 0.125 s x (1 - 1/2) = 1 s: not more than the 1 s compile
        call(sn)
    assert compile_spy == [] and sn.rule.decision.compile is None
    call(sn)  # 17 calls made: 1.0625 s > 1 s
    assert len(compile_spy) == 1 and sn.rule.decision.calls == 17


def test_a_network_compiled_before_finds_the_cache_warm(monkeypatch, clock, compile_spy):
    monkeypatch.setattr(fastpath, "COMPILE_COSTS", COSTS)
    n_modules = fastpath.module_count(image_model().net)
    # a job that pays for a warm compile but not for a cold one
    calls = 2 + int(COSTS.compile_s(n_modules, warm=True) / 0.0625) + 1
    assert calls * 0.0625 < COSTS.compile_s(n_modules, warm=False)

    def job(batch: int) -> SamplingNet:
        sn, _ = auto_net(calls=calls, clock=clock)
        for _ in range(3):
            call(sn, batch)
        return sn

    cold = job(4)
    assert not cold.compiled and cold.rule.decision.warm_cache is False
    forced = SamplingNet(image_model().net, FastPath(False, False, True, False), CPU)  # `--compile`, same network
    call(forced)
    warm = job(4)
    assert warm.compiled and warm.rule.decision.warm_cache is True
    assert not job(8).compiled  # another batch is another graph: its cache is cold


def test_the_sampling_progress_bar_says_compiling(monkeypatch, compile_spy):
    from tqdm.auto import tqdm

    said = []
    monkeypatch.setattr(tqdm, "set_postfix_str", lambda self, s="", refresh=True: said.append((self.desc, s)))
    model = image_model()
    model.net = SamplingNet(model.net, FastPath(False, False, True, False), CPU)  # compiled at its first call
    with torch.no_grad():
        sample(model, SeededNoise(range(2)).randn((3, 8, 8)), sampler="euler", nfe=3, progress=True)
    assert said == [("euler 3 NFE", "compiling"), ("euler 3 NFE", "")]


# ----------------------------------------------------------------------------------- the rule in a training run


def tiny_run(run_dir: Path, **kw) -> TrainConfig:
    base = {"run_dir": str(run_dir), "data": "moons", "net": "mlp", "batch": 16, "steps": 20, "lr_warmup": 2,
            "ckpt_every": 100, "log_every": 5, "grid_images": 4, "grid_nfe": 3, "process": "edm"}
    return TrainConfig(**{**base, **kw})


@pytest.fixture
def gpu_like_training(monkeypatch, clock, compile_spy):
    """Training resolves compile as on a GPU (allowed, automatic), each timed step takes 0.25 s, and a training
    compile costs 2 s and buys 1.5x: a run compiles when its remaining steps x 0.25 s / 3 exceed 2 s."""
    costs = CompileCosts(speedup=2.0, training_speedup=1.5, cold_s=1.0, cold_per_module_s=0.0, warm_s=1.0,
                         warm_per_module_s=0.0, training_factor=2.0)
    monkeypatch.setattr(fastpath, "COMPILE_COSTS", costs)
    monkeypatch.setattr(FastPath, "resolve", classmethod(lambda cls, device, **kw: cls(False, False, True, False)))
    clock.tick = 0.25
    return compile_spy


def run(cfg: TrainConfig, resume: bool = False) -> Trainer:
    trainer = Trainer(cfg, resume=resume)
    try:
        trainer.run()
    finally:
        trainer.close()
    return trainer


def test_a_long_training_run_compiles_after_its_timed_step(gpu_like_training, tmp_path, capsys, monkeypatch):
    from tqdm.auto import tqdm

    said = []
    monkeypatch.setattr(tqdm, "set_postfix_str", lambda self, s="", refresh=True: said.append(s))
    run(tiny_run(tmp_path / "long", steps=30))
    assert len(gpu_like_training) == 1  # once, with the training options
    assert "compile: on: 28 steps left x 0.25 s eager" in capsys.readouterr().out
    assert said == ["compiling", ""]


def test_a_short_training_run_stays_eager(gpu_like_training, tmp_path, capsys):
    run(tiny_run(tmp_path / "short", steps=20))
    assert gpu_like_training == []
    assert "compile: off: 18 steps left x 0.25 s eager" in capsys.readouterr().out


def test_a_resumed_run_counts_only_the_steps_it_has_left(gpu_like_training, tmp_path, capsys):
    cfg = tiny_run(tmp_path / "resumed", steps=8, ckpt_every=8)
    run(cfg)
    run(tiny_run(tmp_path / "resumed", steps=32, ckpt_every=8), resume=True)  # 24 steps to go: 22 after timing
    assert gpu_like_training == []
    assert "compile: off: 22 steps left" in capsys.readouterr().out


def test_forced_training_compile_skips_the_rule(gpu_like_training, tmp_path, capsys):
    trainer = run(tiny_run(tmp_path / "forced", steps=4, compile=True))
    assert len(gpu_like_training) == 1 and trainer.compile_rule is None
    assert "compile: " not in capsys.readouterr().out
