"""The sampling fast path (``fastdiffusion.fastpath``) on the CPU: how the switches resolve, ``accelerate`` against an
untouched eager fp32 copy (bf16 autocast, channels_last, torch.compile), the CUDA-graph batch padding of
``SamplingNet`` (forced on without a GPU), the ``bench throughput`` mode parser and the fast-path CLI flags."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from fastdiffusion.bench import throughput
from fastdiffusion.bench.throughput import MODES, mode_switches
from fastdiffusion.cli import build_parser, main
from fastdiffusion.cli_args import fast_path_options
from fastdiffusion.errors import UserError
from fastdiffusion.fastpath import PRECISIONS, FastPath, SamplingNet, accelerate, fast_path_of
from fastdiffusion.models import build_model, load_model, save_model
from fastdiffusion.nets import net_config
from fastdiffusion.plots import to_uint8
from fastdiffusion.processes import make_process
from fastdiffusion.sampling import sample
from fastdiffusion.seeds import SeededNoise

# bf16 keeps 8 bits of mantissa (relative rounding ~4e-3 per op): a few layers of it stay well under 2 % RMS.
BF16_REL_RMS = 2e-2
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture(autouse=True)
def _keep_cudnn_benchmark():
    """``accelerate`` sets ``torch.backends.cudnn.benchmark`` process-wide: put it back after every test."""
    flag = torch.backends.cudnn.benchmark
    yield
    torch.backends.cudnn.benchmark = flag


def _perturb(module: nn.Module, seed: int = 1, scale: float = 0.05) -> None:
    """Move EDM's near-zero-initialised output layers off zero, so ``F`` (not only the skip path) carries signal."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def image_model(channels: int = 3, res: int = 8) -> nn.Module:
    """A ddpmpp-tiny EDM denoiser on (channels, res, res) data, perturbed (F's RMS output ~0.2); 3 channels so that
    channels_last is a different layout from NCHW (with one channel the two coincide)."""
    meta = {"process": make_process("edm").config(),
            "net": net_config("ddpmpp-tiny", img_resolution=res, in_channels=channels, dropout=0.0),
            "data_shape": [channels, res, res]}
    model = build_model(meta)
    _perturb(model.net, scale=0.02)
    return model.eval()


def points_model() -> nn.Module:
    """A perturbed small MLP EDM denoiser on 2-D points."""
    meta = {"process": make_process("edm").config(), "net": net_config("mlp", in_channels=2, width=64, num_blocks=2),
            "data_shape": [2]}
    model = build_model(meta)
    _perturb(model.net)
    return model.eval()


def dsno_generator() -> nn.Module:
    """A DSNO one-step generator (4 output times) on an MLP backbone: its conditioning has one row per output time."""
    backbone = net_config("mlp", in_channels=2, width=32, num_blocks=1)
    meta = {"process": make_process("edm").config(),
            "net": net_config("dsno", in_channels=2, backbone=backbone, num_times=4, modes=2),
            "data_shape": [2],
            "generator": {"sigmas": [0.0, 0.5, 2.0, 10.0], "cond_sigmas": [0.002, 0.5, 2.0, 10.0],
                          "sigma_max": 80.0}}
    model = build_model(meta)
    _perturb(model.net, scale=0.2)
    return model.eval()


def rel_rms(a: Tensor, ref: Tensor) -> float:
    return float((a - ref).square().mean().sqrt() / ref.square().mean().sqrt())


def _record_output_dtypes(net: nn.Module) -> tuple[set, list]:
    dtypes: set = set()

    def hook(_module, _args, out):
        if isinstance(out, Tensor):
            dtypes.add(out.dtype)

    return dtypes, [m.register_forward_hook(hook) for m in net.modules()]


# ------------------------------------------------------------------------------------------ FastPath.resolve


def test_resolve_auto_is_off_on_the_cpu_and_on_for_cuda():
    assert FastPath.resolve(CPU) == FastPath(bf16=False, channels_last=False, compile=False, cudnn_benchmark=False)
    # only the device type is read: no GPU is needed to resolve CUDA's switches
    assert FastPath.resolve(CUDA) == FastPath(bf16=True, channels_last=True, compile=True, cudnn_benchmark=True)
    assert FastPath.resolve(torch.device("cuda:1"), precision="auto").bf16
    assert FastPath.resolve(CPU).describe() == {"precision": "fp32", "channels_last": False, "compile": False,
                                                "cudnn_benchmark": False}
    assert FastPath.resolve(CUDA).describe()["precision"] == "bf16"


def test_resolve_channels_last_only_for_images_and_explicit_overrides_win():
    assert not FastPath.resolve(CUDA, image=False).channels_last
    assert not FastPath.resolve(CUDA, channels_last=True, image=False).channels_last
    assert FastPath.resolve(CUDA, image=False).compile  # the other switches are untouched by image=False
    fast = FastPath.resolve(CUDA, precision="fp32", channels_last=False, compile=False, cudnn_benchmark=False)
    assert fast == FastPath(bf16=False, channels_last=False, compile=False, cudnn_benchmark=False)
    fast = FastPath.resolve(CPU, precision="bf16", channels_last=True, compile=True, cudnn_benchmark=True)
    assert fast == FastPath(bf16=True, channels_last=True, compile=True, cudnn_benchmark=True)
    assert FastPath.resolve(CPU, precision="fp32") == FastPath.resolve(CPU)


@pytest.mark.parametrize("precision", ["fp16", "FP32", "", "bfloat16"])
def test_resolve_rejects_an_unknown_precision(precision):
    with pytest.raises(UserError, match="--precision") as info:
        FastPath.resolve(CPU, precision=precision)
    assert f"'{precision}'" in str(info.value) and all(p in str(info.value) for p in PRECISIONS)


def test_apply_backend_sets_cudnn_benchmark():
    FastPath.resolve(CPU, cudnn_benchmark=True).apply_backend()
    assert torch.backends.cudnn.benchmark is True
    FastPath.resolve(CPU).apply_backend()
    assert torch.backends.cudnn.benchmark is False


# ----------------------------------------------------------------------------------- accelerate, image model


def test_bf16_channels_last_image_denoiser_agrees_with_eager_fp32():
    torch.manual_seed(0)
    model = image_model()
    ref = copy.deepcopy(model)
    assert accelerate(model, "cpu", precision="bf16", channels_last=True, compile=False) is model
    assert isinstance(model.net, SamplingNet) and model.net.net is not ref.net
    assert fast_path_of(model) == {"precision": "bf16", "channels_last": True, "compile": False,
                                   "cudnn_benchmark": False}
    convs = [p for p in model.net.parameters() if p.ndim == 4 and p.shape[1] > 1 and p.shape[-1] > 1]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert not convs[0].is_contiguous()  # a real change of layout, not a no-op

    seen = {}

    def keep_input(_module, args):
        seen.setdefault("x", args[0])  # returns None: the input goes on unchanged

    model.net.net.register_forward_pre_hook(keep_input)
    dtypes, _ = _record_output_dtypes(model.net.net)
    x, sigma = torch.randn(6, 3, 8, 8), torch.tensor([0.01, 0.1, 0.5, 2.0, 10.0, 80.0])
    with torch.no_grad():
        f_fast, f_ref = model.net(x, sigma.log() / 4), ref.net(x, sigma.log() / 4)  # F itself: no skip path
        d_fast, d_ref = model(x * sigma.reshape(-1, 1, 1, 1), sigma), ref(x * sigma.reshape(-1, 1, 1, 1), sigma)
    assert seen["x"].is_contiguous(memory_format=torch.channels_last) and not seen["x"].is_contiguous()
    assert torch.bfloat16 in dtypes  # the network really ran under bf16 autocast...
    assert f_fast.dtype == d_fast.dtype == torch.float32  # ...and hands back fp32
    assert f_fast.shape == f_ref.shape == x.shape and d_fast.shape == x.shape
    assert 0 < rel_rms(f_fast, f_ref) < BF16_REL_RMS
    assert 0 < rel_rms(d_fast, d_ref) < BF16_REL_RMS

    noise = SeededNoise(range(4)).randn((3, 8, 8))
    with torch.no_grad():
        s_fast = sample(model, noise, sampler="heun", nfe=5)
        s_ref = sample(ref, noise, sampler="heun", nfe=5)
    assert s_fast.dtype == torch.float32 and s_fast.shape == s_ref.shape == (4, 3, 8, 8)
    assert 0 < rel_rms(s_fast, s_ref) < BF16_REL_RMS


def test_all_switches_off_is_exactly_the_eager_model():
    torch.manual_seed(0)
    model = image_model()
    ref = copy.deepcopy(model)
    accelerate(model, "cpu", precision="fp32", channels_last=False, compile=False, cudnn_benchmark=False)
    assert isinstance(model.net, SamplingNet) and model.net.net._compiled_call_impl is None and not model.net.graphs
    dtypes, _ = _record_output_dtypes(model.net.net)
    x, sigma = torch.randn(5, 3, 8, 8), torch.tensor([0.02, 0.3, 1.0, 5.0, 40.0])
    noise = SeededNoise([3, 4]).randn((3, 8, 8))
    with torch.no_grad():
        torch.testing.assert_close(model(x, sigma), ref(x, sigma), rtol=0, atol=1e-6)
        torch.testing.assert_close(sample(model, noise, sampler="euler", nfe=4),
                                   sample(ref, noise, sampler="euler", nfe=4), rtol=0, atol=1e-6)
    assert torch.bfloat16 not in dtypes
    assert all(p.is_contiguous() for p in model.net.parameters())


def test_auto_on_the_cpu_is_all_off_and_the_device_defaults_to_the_parameters():
    torch.manual_seed(0)
    model = image_model()
    ref = copy.deepcopy(model)
    torch.backends.cudnn.benchmark = True
    accelerate(model)  # device from the parameters (cpu), every switch automatic
    assert model.net.fast == FastPath(bf16=False, channels_last=False, compile=False, cudnn_benchmark=False)
    assert torch.backends.cudnn.benchmark is False  # the resolved switch is applied process-wide
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.5, 3.0])
    with torch.no_grad():
        torch.testing.assert_close(model(x, sigma), ref(x, sigma), rtol=0, atol=1e-6)


def test_points_model_never_goes_channels_last():
    model = points_model()
    accelerate(model, "cpu", precision="bf16", channels_last=True, compile=False)
    assert model.net.fast.bf16 and not model.net.fast.channels_last  # data_shape (2,) is not an image
    assert fast_path_of(model)["channels_last"] is False


# --------------------------------------------------------------------------------------- accelerate, compile


def test_compile_passes_inductor_options_without_cuda_graphs_on_the_cpu(monkeypatch):
    """What ``accelerate(compile=True)`` asks of torch.compile; the network is then traced by Dynamo (aot_eager
    backend, no C++ build) so the compiled path is also checked against eager in a fraction of Inductor's time."""
    calls = []
    real_compile = torch.compile

    def spy(fn, **kwargs):
        calls.append(kwargs)
        return real_compile(fn, backend="aot_eager", dynamic=kwargs["dynamic"])

    monkeypatch.setattr(torch, "compile", spy)
    torch.manual_seed(0)
    model = points_model()
    ref = copy.deepcopy(model)
    accelerate(model, "cpu", precision="fp32", compile=True, compile_options={"max_autotune": True})
    assert calls == [{"options": {"triton.cudagraphs": False, "max_autotune": True}, "dynamic": False}]
    assert not model.net.graphs and model.net.net._compiled_call_impl is not None
    # compiled in place: one copy of the weights, under the wrapper's "net." prefix (no second, compiled copy)
    assert list(model.net.state_dict()) == [f"net.{k}" for k in ref.net.state_dict()]
    assert fast_path_of(model)["compile"] is True
    x, sigma = torch.randn(16, 2), torch.rand(16) * 5 + 0.01
    with torch.no_grad():
        torch.testing.assert_close(model(x, sigma), ref(x, sigma), rtol=1e-5, atol=1e-5)
    # the caller's options override the default
    accelerate(points_model(), "cpu", compile=True, compile_options={"triton.cudagraphs": True})
    assert calls[-1]["options"] == {"triton.cudagraphs": True}


def test_bad_compile_option_reaches_inductor():
    with pytest.raises(RuntimeError, match="nope"):
        accelerate(points_model(), "cpu", compile=True, compile_options={"nope": 1})


def test_inductor_compiled_mlp_matches_eager():
    """A real Inductor build on the CPU (C++ codegen): ~15 s with a cold Inductor cache, ~3 s warm."""
    torch.manual_seed(0)
    model = points_model()
    ref = copy.deepcopy(model)
    accelerate(model, "cpu", precision="fp32", compile=True)
    assert model.net.net._compiled_call_impl is not None
    x, sigma = torch.randn(16, 2), torch.rand(16) * 5 + 0.01
    with torch.no_grad():
        out = model(x, sigma)
    torch.testing.assert_close(out, ref(x, sigma), rtol=1e-5, atol=1e-5)
    assert out.dtype == torch.float32


# ------------------------------------------------------------------------------------ CUDA-graph padding


class Recorder(nn.Module):
    """A row-wise network that records what it is given. ``per_time``: DSNO-style, (N, M, D) out for M times."""

    def __init__(self, per_time: bool = False) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.5))
        self.per_time = per_time
        self.calls: list[tuple[Tensor, Tensor, Tensor | None]] = []

    def forward(self, x: Tensor, c_noise: Tensor, class_labels: Tensor | None = None) -> Tensor:
        self.calls.append((x.clone(), c_noise.clone(), None if class_labels is None else class_labels.clone()))
        if self.per_time:
            return self.scale * x.unsqueeze(1) * c_noise.reshape(1, -1, 1)
        out = self.scale * x + c_noise.reshape(-1, 1)
        return out if class_labels is None else out + class_labels.sum(1, keepdim=True)


def _graphs_net(net: nn.Module, row_cond: bool = True) -> SamplingNet:
    sn = SamplingNet(net, FastPath.resolve(CPU), CPU, row_cond=row_cond)
    assert not sn.graphs  # no CUDA graphs without CUDA...
    sn.graphs = True  # ...so force the padding path that a GPU takes
    return sn


def test_padding_to_the_first_batch_changes_no_row():
    rec = Recorder()
    sn = _graphs_net(rec)
    x8, c8, y8 = torch.randn(8, 3), torch.randn(8), torch.randn(8, 10)
    x5, c5, y5 = torch.randn(5, 3), torch.randn(5), torch.randn(5, 10)
    with torch.no_grad():
        out8 = sn(x8, c8, y8)
        out5 = sn(x5, c5, y5)
        alone = Recorder()(x5, c5, y5)
    assert out8.shape == (8, 3) and out5.shape == (5, 3)
    torch.testing.assert_close(out5, alone, rtol=0, atol=0)
    x_seen, c_seen, y_seen = rec.calls[1]
    assert x_seen.shape == (8, 3) and c_seen.shape == (8,) and y_seen.shape == (8, 10)  # padded to the first batch
    assert torch.equal(x_seen[:5], x5) and torch.equal(x_seen[5:], x5[:1].expand(3, 3))  # with its first row
    assert torch.equal(c_seen[5:], c5[:1].expand(3)) and torch.equal(y_seen[5:], y5[:1].expand(3, 10))


def test_without_graphs_nothing_is_padded():
    rec = Recorder()
    sn = SamplingNet(rec, FastPath.resolve(CPU), CPU)
    with torch.no_grad():
        sn(torch.randn(8, 3), torch.randn(8))
        out = sn(torch.randn(5, 3), torch.randn(5))
    assert rec.calls[1][0].shape == (5, 3) and out.shape == (5, 3)


def test_row_cond_false_keeps_the_conditioning_unpadded():
    rec = Recorder(per_time=True)
    sn = _graphs_net(rec, row_cond=False)
    times = torch.tensor([0.1, 0.2, 0.3])  # M = 3 output times, not one row per sample
    x5 = torch.randn(5, 2)
    with torch.no_grad():
        sn(torch.randn(8, 2), times)
        out5 = sn(x5, times)
    assert [tuple(c.shape) for _, c, _ in rec.calls] == [(3,), (3,)]
    assert rec.calls[1][0].shape == (8, 2)  # the data is still padded
    assert out5.shape == (5, 3, 2)
    torch.testing.assert_close(out5, Recorder(per_time=True)(x5, times), rtol=0, atol=0)


def test_row_cond_true_would_pad_a_per_time_conditioning():
    """The contrast that makes the test above mean something: row_cond=True pads the conditioning too."""
    rec = Recorder(per_time=True)
    sn = _graphs_net(rec, row_cond=True)
    with torch.no_grad():
        sn(torch.randn(8, 2), torch.randn(8))
        sn(torch.randn(5, 2), torch.randn(5))
    assert rec.calls[1][1].shape == (8,)


def test_graph_outputs_are_copied_out():
    """CUDA graphs reuse their output memory: each output must survive the next call."""

    class StaticOutput(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("out", torch.zeros(8, 2))

        def forward(self, x, c_noise, class_labels=None):
            self.out.copy_(x)
            return self.out

    sn = _graphs_net(StaticOutput())
    a, b = torch.randn(8, 2), torch.randn(8, 2)
    first = sn(a, torch.zeros(8))
    sn(b, torch.zeros(8))
    assert torch.equal(first, a)


def test_padded_dsno_generator_matches_eager():
    """The real DSNO wiring: accelerate() sees family 'dsno' and does not pad the M conditioning times."""
    torch.manual_seed(0)
    gen = dsno_generator()
    ref = copy.deepcopy(gen)
    accelerate(gen, "cpu", precision="fp32", compile=False)
    assert gen.net.row_cond is False
    gen.net.graphs = True
    x8, x5 = torch.randn(8, 2) * 80, torch.randn(5, 2) * 80
    with torch.no_grad():
        torch.testing.assert_close(gen(x8), ref(x8), rtol=1e-6, atol=1e-5)
        out5 = gen(x5)
        torch.testing.assert_close(out5, ref(x5), rtol=1e-6, atol=1e-5)
    assert out5.shape == (5, 4, 2)
    assert accelerate(points_model(), "cpu").net.row_cond is True


def test_padded_image_denoiser_matches_the_rows_alone():
    torch.manual_seed(0)
    model = image_model()
    ref = copy.deepcopy(model)
    accelerate(model, "cpu", precision="fp32", compile=False)
    model.net.graphs = True
    x8, s8 = torch.randn(8, 3, 8, 8), torch.linspace(0.1, 20, 8)
    x5, s5 = torch.randn(5, 3, 8, 8), torch.linspace(0.05, 5, 5)
    with torch.no_grad():
        model(x8, s8)
        out5 = model(x5, s5)
        torch.testing.assert_close(out5, ref(x5, s5), rtol=1e-5, atol=1e-5)
    assert out5.shape == (5, 3, 8, 8)


# --------------------------------------------------------------------------------- accelerate twice, fast_path_of


def test_an_accelerated_model_saves_its_plain_network(tmp_path):
    torch.manual_seed(0)
    model = image_model()
    ref = copy.deepcopy(model)
    accelerate(model, "cpu", precision="bf16", channels_last=True, compile=False)
    save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(tmp_path / "m.safetensors")
    assert not isinstance(loaded.net, SamplingNet)
    for (k, a), (k_ref, b) in zip(loaded.net.state_dict().items(), ref.net.state_dict().items(), strict=True):
        assert k == k_ref and torch.equal(a, b)


def test_accelerate_twice_is_a_user_error():
    model = points_model()
    accelerate(model, "cpu", precision="bf16")
    first = model.net
    torch.backends.cudnn.benchmark = True
    with pytest.raises(UserError, match="twice"):
        accelerate(model, "cpu", precision="fp32", cudnn_benchmark=False)
    assert model.net is first and not isinstance(first.net, SamplingNet)
    assert torch.backends.cudnn.benchmark is True  # the refused call changed no process-wide flag
    assert fast_path_of(model)["precision"] == "bf16"


def test_fast_path_of_plain_and_accelerated_models():
    torch.backends.cudnn.benchmark = False
    plain = points_model()
    assert fast_path_of(plain) == {"precision": "fp32", "channels_last": False, "compile": False,
                                   "cudnn_benchmark": False}
    torch.backends.cudnn.benchmark = True  # a plain model reports the process-wide flag
    assert fast_path_of(plain)["cudnn_benchmark"] is True
    assert fast_path_of(lambda x, s: x)["precision"] == "fp32"  # any callable without a net
    model = accelerate(image_model(), "cpu", precision="bf16", channels_last=True, compile=False,
                       cudnn_benchmark=True)
    assert fast_path_of(model) == {"precision": "bf16", "channels_last": True, "compile": False,
                                   "cudnn_benchmark": True}


# ------------------------------------------------------------------------------------ bench throughput modes


def test_named_modes():
    for name in MODES:
        assert mode_switches(name) == MODES[name]
    assert mode_switches("fp32") == {"precision": "fp32", "channels_last": False, "compile": False,
                                     "cudnn_benchmark": False}
    assert mode_switches("fast") == {"precision": "bf16", "channels_last": True, "compile": True,
                                     "cudnn_benchmark": True}
    mode_switches("fast")["compile"] = False
    assert MODES["fast"]["compile"] is True  # a returned dict is a copy


def test_mode_overrides_are_json_values():
    assert mode_switches("fast+compile=false") == {**MODES["fast"], "compile": False}
    both = mode_switches("fast+cudnn_benchmark=false+precision=fp32")
    assert both == {**MODES["fast"], "cudnn_benchmark": False, "precision": "fp32"}
    assert mode_switches("fp32+batch=64")["batch"] == 64  # any training-config field, typed by JSON
    opts = mode_switches('fast+compile_options={"a":1,"b":2}')
    assert opts["compile_options"] == {"a": 1, "b": 2} and opts["compile"] is True
    assert mode_switches("fast+lr=1e+3+compile=false")["lr"] == 1000.0  # a "+" inside a value is not a separator


@pytest.mark.parametrize(("mode", "needle"), [
    ("turbo", "unknown mode 'turbo'"),
    ("", "unknown mode ''"),
    ("fast+nope=1", "nope"),
    ("fast+compile", "unknown mode .fast.compile."),
])  # fmt: skip
def test_bad_modes_are_user_errors(mode, needle):
    with pytest.raises(UserError, match=needle):
        mode_switches(mode)


def test_nope_error_names_the_field_and_why():
    with pytest.raises(UserError) as info:
        mode_switches("fast+nope=1+zz=2")
    assert "nope" in str(info.value) and "zz" in str(info.value) and "training-config field" in str(info.value)


def test_modes_list_keeps_commas_inside_braces_together(monkeypatch, capsys):
    seen = {}

    def fake_run(net, data, batches, modes, **kwargs):
        seen.update(batches=batches, modes=modes)
        return {"ok": True}

    monkeypatch.setattr(throughput, "run", fake_run)
    modes = ('fp32,fast+compile_options={"a":1,"b":2},bf16+compile=false,'
             'fast+compile_options={"x":{"y":1,"z":2},"w":3}')
    args = build_parser().parse_args(["bench", "throughput", "--modes", modes, "--batch", "4,8"])
    args.func(args)
    assert seen["batches"] == [4, 8]
    assert seen["modes"] == ["fp32", 'fast+compile_options={"a":1,"b":2}', "bf16+compile=false",
                             'fast+compile_options={"x":{"y":1,"z":2},"w":3}']
    assert mode_switches(seen["modes"][3])["compile_options"] == {"x": {"y": 1, "z": 2}, "w": 3}
    assert json.loads(capsys.readouterr().out) == {"ok": True}


# ------------------------------------------------------------------------------------------------- CLI


def test_sample_fast_path_flags_parse():
    base = ["sample", "some/run"]
    args = build_parser().parse_args([*base, "--precision", "fp32", "--no-compile", "--channels-last",
                                      "--no-cudnn-benchmark"])
    assert fast_path_options(args) == {"precision": "fp32", "channels_last": True, "compile": False,
                                       "cudnn_benchmark": False}
    defaults = fast_path_options(build_parser().parse_args(base))
    assert defaults == {"precision": "auto", "channels_last": None, "compile": None, "cudnn_benchmark": None}
    args = build_parser().parse_args([*base, "--precision", "bf16", "--compile", "--no-channels-last",
                                      "--cudnn-benchmark"])
    assert fast_path_options(args) == {"precision": "bf16", "channels_last": False, "compile": True,
                                       "cudnn_benchmark": True}
    args = build_parser().parse_args(["eval", "some/run", "--precision", "bf16", "--no-compile"])  # eval too
    assert fast_path_options(args)["precision"] == "bf16" and fast_path_options(args)["compile"] is False


@pytest.mark.parametrize("bad", [["--precision", "fp16"], ["--precision", "BF16"], ["--compile=yes"]])
def test_sample_rejects_bad_fast_path_flags(bad, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["sample", "some/run", *bad])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--precision" in err or "--compile" in err


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("fastpath") / "tiny.safetensors"
    save_model(image_model(), path)
    return path


def test_sample_cli_on_the_fast_path(model_file, tmp_path, monkeypatch):
    import fastdiffusion.fastpath as fastpath

    used = []
    real = fastpath.accelerate

    def recording(model, *a, **kw):
        out = real(model, *a, **kw)
        used.append(fast_path_of(out))
        return out

    monkeypatch.setattr(fastpath, "accelerate", recording)
    common = ["sample", str(model_file), "--sampler", "heun", "--nfe", "5", "--seeds", "0-5", "--batch", "4",
              "--device", "cpu", "--quiet"]
    fast, plain = tmp_path / "fast.npz", tmp_path / "plain.npz"
    assert main([*common, "--precision", "bf16", "--channels-last", "--out", str(fast)]) == 0
    assert main([*common, "--out", str(plain)]) == 0
    assert used == [{"precision": "bf16", "channels_last": True, "compile": False, "cudnn_benchmark": False},
                    {"precision": "fp32", "channels_last": False, "compile": False, "cudnn_benchmark": False}]
    a, b = np.load(fast), np.load(plain)
    assert a["samples"].shape == (6, 8, 8, 3) and a["samples"].dtype == np.uint8 and list(a["seeds"]) == [*range(6)]
    diff = np.abs(a["samples"].astype(int) - b["samples"].astype(int))
    assert 0 < diff.mean() < 1.5 and diff.max() <= 16  # uint8 levels (measured: mean 0.5, max 6)

    # the same seeds sampled in-process from the loaded file, eager fp32: what the plain CLI run wrote
    ref = load_model(model_file)
    with torch.no_grad():
        x = sample(ref, SeededNoise(range(4)).randn((3, 8, 8)), sampler="heun", nfe=5,
                   noise_fn=SeededNoise(range(4)))
    assert np.array_equal(to_uint8(x), b["samples"][:4])


def test_eval_records_the_fast_path_in_its_protocol(tmp_path):
    torch.manual_seed(0)
    file = tmp_path / "gray.safetensors"
    save_model(image_model(channels=1), file)
    out = tmp_path / "eval.json"
    argv = ["eval", str(file), "--metrics", "sliced", "--n", "8", "--reference", "digits", "--sampler", "euler",
            "--nfe", "2", "--batch", "8", "--device", "cpu", "--precision", "bf16", "--channels-last",
            "--no-compile", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    expected = {"precision": "bf16", "channels_last": True, "compile": False, "cudnn_benchmark": False}
    assert report["protocol"]["fast_path"] == expected
    assert report["results"]["sliced"]["protocol"]["fast_path"] == expected

