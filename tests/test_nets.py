from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from fastdiffusion.errors import UserError
from fastdiffusion.nets import ARCHS, MLP, PRESETS, SongUNet, build_net, net_config
from fastdiffusion.nets.unet import Resample

# Small builds of every preset: the CIFAR-10 presets keep their structure (embedding, encoder, filter, 3 levels)
# at width 16 and one block per level.
SMALL = {
    "ddpmpp-cifar10": dict(in_channels=3, img_resolution=8, model_channels=16, num_blocks=1),
    "ncsnpp-cifar10": dict(in_channels=3, img_resolution=8, model_channels=16, num_blocks=1),
    "ddpmpp-small": dict(in_channels=1, img_resolution=16, attn_resolutions=[4]),
    "ddpmpp-tiny": dict(in_channels=1, img_resolution=16),
    "mlp": dict(in_channels=2, width=64, num_blocks=2),
    "cunet-small": dict(in_channels=1, img_resolution=16),
    "cunet-small-euler2": dict(in_channels=1, img_resolution=16),
    "cunet-tiny": dict(in_channels=1, img_resolution=16),
}



def _inputs(net: torch.nn.Module, n: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    res = None if isinstance(net, MLP) else net.img_resolution
    shape = (n, net.in_channels) if res is None else (n, net.in_channels, res, res)
    return torch.randn(shape, generator=g), torch.randn(n, generator=g)


def _perturb(net: torch.nn.Module, scale: float = 0.05, seed: int = 1) -> torch.nn.Module:
    """Move the near-zero-initialised output layers away from zero so the output depends on every input."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return net


def _count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_every_preset_is_tested() -> None:
    assert set(SMALL) == set(PRESETS)


def test_cifar10_parameter_counts() -> None:
    # Built on the meta device: the count needs shapes only, not 56M initialised weights.
    with torch.device("meta"):
        ddpmpp = build_net("ddpmpp-cifar10", in_channels=3)
        ncsnpp = build_net("ncsnpp-cifar10", in_channels=3)
    assert _count(ddpmpp) == pytest.approx(55.73e6, rel=0.01)  # EDM reports 55.73M (unconditional)
    # NCSN++ (~56.4M) adds exactly: a 2x wider noise mapping input (256 -> 512) and the residual encoder's
    # two 3x3 convs (3 -> 256 at 16x16, 256 -> 256 at 8x8).
    extra = 256 * 512 - 128 * 512 + (3 * 9 * 256 + 256) + (256 * 9 * 256 + 256)
    assert _count(ncsnpp) - _count(ddpmpp) == extra
    assert _count(ncsnpp) == pytest.approx(56.4e6, rel=0.01)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_output_shape_and_dtype(preset: str) -> None:
    torch.manual_seed(0)
    net = build_net(preset, **SMALL[preset])
    x, c = _inputs(net)
    y = net(x, c)
    assert y.shape == x.shape
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()
    # EDM-style init: the last layer of every residual branch and the output layer start at (almost) zero.
    assert y.abs().max() < 1e-3


@pytest.mark.parametrize("preset", ["ddpmpp-tiny", "ncsnpp-cifar10", "mlp"])
def test_noise_labels_change_output(preset: str) -> None:
    torch.manual_seed(0)
    net = _perturb(build_net(preset, **SMALL[preset], dropout=0.0)).eval()
    x, _ = _inputs(net)
    y0 = net(x, torch.full((2,), -1.0))
    y1 = net(x, torch.full((2,), 1.0))
    assert (y0 - y1).abs().max() > 1e-3
    # A scalar noise label is broadcast over the batch.
    torch.testing.assert_close(net(x, torch.tensor(1.0)), y1)


def test_training_steps_reduce_loss_and_reach_every_parameter() -> None:
    torch.manual_seed(0)
    net = build_net("ddpmpp-tiny", in_channels=1, img_resolution=8)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    x, c = _inputs(net, n=16)
    target = -x  # anything learnable
    losses = []
    for _ in range(15):
        loss = (net(x, c) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        if not losses:  # no dead module (would break DDP without find_unused_parameters)
            assert all(p.grad is not None for p in net.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]


@pytest.mark.parametrize(
    "overrides",
    [
        dict(arch="ddpmpp-tiny"),
        dict(arch="ncsnpp", model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8]),
        dict(arch="ddpmpp", model_channels=16, channel_mult=[1, 2, 2], num_blocks=1, encoder_type="skip",
             decoder_type="skip", adaptive_scale=True, attn_resolutions=[4]),
    ],
)  # fmt: skip
def test_channels_last_matches_contiguous(overrides: dict) -> None:
    torch.manual_seed(0)
    net = _perturb(build_net(in_channels=3, img_resolution=16, **overrides)).eval()
    x, c = _inputs(net)
    with torch.no_grad():
        y = net(x, c)
        y_cl = net(x.to(memory_format=torch.channels_last), c)
        y_both = net.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last), c)
    torch.testing.assert_close(y_cl, y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y_both, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("preset", ["ddpmpp-tiny", "ncsnpp-cifar10", "mlp"])
def test_bf16_autocast_on_cpu(preset: str) -> None:
    torch.manual_seed(0)
    net = _perturb(build_net(preset, **SMALL[preset], dropout=0.0))
    x, c = _inputs(net)
    with torch.no_grad():
        y32 = net(x, c)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(x, c)
    assert y.dtype == torch.float32  # output in the dtype of x, whatever autocast ran inside
    assert torch.isfinite(y).all()
    assert (y - y32).abs().max() < 0.05 * y32.abs().max() + 1e-3
    y.square().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in net.parameters())


@pytest.mark.parametrize(
    "arch, kwargs",
    [
        ("ddpmpp-tiny", dict(in_channels=1, img_resolution=16)),
        ("ncsnpp", dict(in_channels=3, img_resolution=8, model_channels=16, channel_mult=[1, 2], num_blocks=1,
                        label_dim=10, out_channels=6)),
        ("mlp", dict(in_channels=5, width=32, embedding_type="fourier")),
    ],
)  # fmt: skip
def test_config_round_trip(arch: str, kwargs: dict) -> None:
    cfg = net_config(arch, **kwargs)
    assert cfg["arch"] in ARCHS
    cfg = json.loads(json.dumps(cfg))  # what a checkpoint stores
    assert net_config(**cfg) == cfg  # resolving is idempotent
    net = build_net(arch, **kwargs)
    rebuilt = build_net(**cfg)
    assert net.net_config == cfg
    sd, sd2 = net.state_dict(), rebuilt.state_dict()
    assert {k: v.shape for k, v in sd.items()} == {k: v.shape for k, v in sd2.items()}
    rebuilt.load_state_dict(sd)  # carries the Fourier frequencies too
    x, c = _inputs(_perturb(net).eval())
    rebuilt.load_state_dict(net.state_dict())
    torch.testing.assert_close(rebuilt.eval()(x, c), net(x, c))


def test_class_labels() -> None:
    torch.manual_seed(0)
    net = _perturb(build_net("ddpmpp-tiny", in_channels=1, img_resolution=8, label_dim=10)).eval()
    x, c = _inputs(net, n=3)
    y = torch.tensor([0, 3, 9])
    out = net(x, c, y)
    torch.testing.assert_close(net(x, c, torch.nn.functional.one_hot(y, 10).float()), out)
    assert (net(x, c, torch.tensor([1, 3, 9])) - out)[0].abs().max() > 1e-4
    assert net(x, c).shape == x.shape  # None = unconditional (all-zero label)
    with pytest.raises(ValueError, match="label_dim=0"):
        build_net("ddpmpp-tiny", in_channels=1, img_resolution=8)(x, c, y)


def test_mlp_defaults_and_arch_name() -> None:
    net = build_net("mlp", in_channels=2, img_resolution=32)  # img_resolution is ignored by the MLP
    assert isinstance(net, MLP) and "img_resolution" not in net.net_config
    assert net(torch.randn(7, 2), torch.randn(7)).shape == (7, 2)
    assert isinstance(build_net("ddpmpp", in_channels=3, img_resolution=8, model_channels=16), SongUNet)


@pytest.mark.parametrize(
    "call, match",
    [
        (dict(arch="ddpm++", in_channels=3, img_resolution=32), r"'ddpm\+\+'.*ddpmpp-cifar10.*ncsnpp"),
        (dict(arch="ddpmpp-tiny", in_channels=1, img_resolution=16, chanel_mult=[1]), r"'chanel_mult'.*channel_mult"),
        (dict(arch="ddpmpp-tiny", in_channels=1), r"img_resolution"),
        (dict(arch="ddpmpp-tiny", in_channels=1, img_resolution=10, channel_mult=[1, 2, 2]), r"divisible"),
        (dict(arch="ncsnpp", in_channels=1, img_resolution=8, encoder_type="fancy"), r"'fancy'.*residual"),
        (dict(arch="mlp", in_channels=2, embedding_type="rope"), r"'rope'.*fourier"),
        (dict(arch="ddpmpp-tiny", in_channels=1, img_resolution=8, channel_mult=2), r"channel_mult|int"),
    ],
)
def test_errors(call: dict, match: str) -> None:
    with pytest.raises(UserError, match=match) as info:
        build_net(**call)
    assert "\n" not in str(info.value)


def test_group_norm_nhwc_form_matches_native() -> None:
    """The per-channel-statistics form (values and gradients) against the native kernel in float64. Channels get
    different means, so the between-channel term of the group variance is exercised."""
    from fastdiffusion.nets.unet import GroupNorm

    torch.manual_seed(0)
    norm = GroupNorm(64).double()
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(3, 64, 8, 8, dtype=torch.float64) * 3 + torch.randn(1, 64, 1, 1, dtype=torch.float64) * 4
    x_cl = x.to(memory_format=torch.channels_last).requires_grad_()
    y_cl = norm._forward_nhwc(x_cl)  # the torch.compile path (fp32 statistics)
    assert y_cl.is_contiguous(memory_format=torch.channels_last)  # the layout survives the norm
    x.requires_grad_()
    ref = F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
    torch.testing.assert_close(y_cl, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ref)
    got = torch.autograd.grad(y_cl, (x_cl, norm.weight, norm.bias), g)
    want = torch.autograd.grad(ref, (x, norm.weight, norm.bias), g)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_nhwc_upsample_equals_interpolate() -> None:
    from fastdiffusion.nets.unet import upsample_nearest_nhwc

    x = torch.randn(2, 5, 4, 3, dtype=torch.float64).to(memory_format=torch.channels_last).requires_grad_()
    y, ref = upsample_nearest_nhwc(x), F.interpolate(x, scale_factor=2.0, mode="nearest")
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, ref, rtol=0, atol=0)
    g = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(ref, x, g)[0])


def test_compiled_channels_last_unet_matches_eager(monkeypatch) -> None:
    """Under torch.compile a channels_last U-Net takes the NHWC forms of GroupNorm and upsampling; its output and
    gradients equal the eager NCHW network's. Dynamo traces it (aot_eager: no C++ build)."""
    from fastdiffusion.nets import unet

    traced = {"norm": 0, "up": 0}
    norm_form, up_form = unet.GroupNorm._forward_nhwc, unet.upsample_nearest_nhwc

    def count_norm(self, x):
        traced["norm"] += 1
        return norm_form(self, x)

    def count_up(x):
        traced["up"] += 1
        return up_form(x)

    monkeypatch.setattr(unet.GroupNorm, "_forward_nhwc", count_norm)
    monkeypatch.setattr(unet, "upsample_nearest_nhwc", count_up)
    torch.manual_seed(0)
    net = build_net("ddpmpp-tiny", img_resolution=16, in_channels=1)
    for p in net.parameters():  # zero-initialised output layers would hide most of the network
        p.data.normal_(0, 0.2)
    x, sigma = torch.randn(4, 1, 16, 16), torch.rand(4) + 0.5
    params = list(net.parameters())
    ref = net(x, sigma)
    grads_ref = torch.autograd.grad(ref.square().sum(), params)
    assert traced == {"norm": 0, "up": 0}  # eager NCHW: native kernels
    compiled = torch.compile(net, backend="aot_eager", dynamic=False)
    net.to(memory_format=torch.channels_last)
    out = compiled(x.to(memory_format=torch.channels_last), sigma)
    assert traced["norm"] > 0 and traced["up"] > 0
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for g, g_ref in zip(torch.autograd.grad(out.square().sum(), params), grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["down", "up"])
def test_box_resample_equals_the_fir_convolution(mode: str) -> None:
    """The (1, 1) filter runs as pooling / nearest upsampling; it must equal the depthwise FIR form it replaces."""
    x = torch.randn(2, 5, 8, 8, dtype=torch.float64)
    box = Resample(5, mode, (1, 1)).double()
    assert box.box
    k = box.kernel.double()
    ref = (F.conv2d(x, k, stride=2, groups=5) if mode == "down"
           else F.conv_transpose2d(x, 4 * k, stride=2, groups=5))
    torch.testing.assert_close(box(x), ref, rtol=0, atol=1e-12)
    y = box(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-12)
    assert not Resample(5, mode, (1, 3, 3, 1)).box  # other filters keep the convolution


def test_group_norm_per_channel_form_in_bf16_is_as_accurate_as_native() -> None:
    """The eager per-channel form (CUDA inference on channels_last input) reads bf16 input without an fp32 copy and
    accumulates in fp32: against float64, its error is the native fp32 kernel's within output rounding, also when
    channel means lie several standard deviations off zero (E[x^2] - E[x]^2 cancels)."""
    from fastdiffusion.nets.unet import GroupNorm

    torch.manual_seed(0)
    norm = GroupNorm(64)
    with torch.no_grad():
        norm.weight.normal_(1, 0.2)
        norm.bias.normal_(0, 0.2)
    x = (torch.randn(4, 64, 16, 16) + torch.rand(1, 64, 1, 1) * 6).bfloat16().to(memory_format=torch.channels_last)
    ref = F.group_norm(x.double(), norm.num_groups, norm.weight.double(), norm.bias.double(), norm.eps)
    with torch.no_grad():
        got = norm._forward_nhwc(x)
        native = F.group_norm(x.float(), norm.num_groups, norm.weight, norm.bias, norm.eps).bfloat16()
    assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=torch.channels_last)
    err, err_native = (got.double() - ref).abs(), (native.double() - ref).abs()
    assert err.max() <= 1.25 * err_native.max()
    assert err.square().mean() <= 1.2 * err_native.square().mean()
