from __future__ import annotations

import argparse
import itertools
import json
import math

import numpy as np
import pytest
import torch

import fastdiffusion as fd
from fastdiffusion.errors import UserError
from fastdiffusion.nets import ContinuousUNet, build_net, net_config
from fastdiffusion.nets.cunet import TABLEAUS, ODEBlock, VectorField, odeint
from fastdiffusion.nets.profile import add_info_arguments, count_flops, info_net, profile_net

# A small continuous U-Net with every part switched on: 3 levels, attention in the encoder, middle and decoder,
# augmentation, class labels and PSLD-style 2C channels in and out.
SMALL = dict(arch="cunet", in_channels=2, out_channels=2, img_resolution=8, model_channels=8, channel_mult=[1, 2, 2],
             augment_channels=4, attn_resolutions=[2], label_dim=3)  # fmt: skip



def _inputs(net: ContinuousUNet, n: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    res = net.img_resolution
    return torch.randn(n, net.in_channels, res, res, generator=g), torch.randn(n, generator=g)


def _randomise_outputs(net: torch.nn.Module, scale: float = 0.3, seed: int = 1) -> torch.nn.Module:
    """Give the near-zero-initialised layers (every vector field's conv1, attention projections, the output conv, the
    ODE-time vectors) random weights, so the output depends on everything upstream of them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if any(key in name for key in ("conv1", "proj", "conv_out", "field.time")):
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale / math.sqrt(p[0].numel()))
    return net


def _block(method: str = "rk4", steps: int = 1, seed: int = 0) -> tuple[ODEBlock, torch.Tensor, torch.Tensor]:
    """A float64 ODE block with a non-trivial vector field, an input and an embedding."""
    torch.manual_seed(seed)
    block = ODEBlock(6, 2, 8, method=method, steps=steps).double()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.2)
    h = torch.randn(2, 6, 5, 5, generator=g, dtype=torch.float64)
    emb = torch.randn(2, 8, generator=g, dtype=torch.float64)
    return block, h, emb


@pytest.mark.parametrize("solver", sorted(TABLEAUS))
def test_blocks_start_as_the_identity_and_make_their_stated_evaluations(solver: str) -> None:
    """At init every ODE block returns its input up to the O(1e-5) of its vector field (last conv gain 1e-5) and the
    output conv is near zero; one forward pass calls each block's vector field exactly steps x stages times, which
    is what ``ODEBlock.evaluations`` reports."""
    torch.manual_seed(0)
    net = build_net(**{**SMALL, "out_channels": 4}, solver=solver, solver_steps=2)
    x, c = _inputs(net)
    seen, calls = [], {}
    for block in net.ode_blocks():
        block.register_forward_hook(lambda m, args, out: seen.append((args[0].detach(), out.detach())))
        block.field.register_forward_hook(lambda m, args, out: calls.__setitem__(m, calls.get(m, 0) + 1))
    y = net(x, c)
    assert y.shape == (3, 4, 8, 8) and y.dtype == torch.float32
    assert y.abs().max() < 1e-4
    assert len(seen) == len(net.ode_blocks()) == 7  # 3 encoder levels, the middle, 3 decoder levels
    for h, out in seen:
        assert (out - h).abs().max() < 1e-4 * h.abs().max()
    for block in net.ode_blocks():
        assert calls[block.field] == block.evaluations == 2 * len(TABLEAUS[solver].c)


def test_an_ode_block_with_a_zero_field_is_the_identity() -> None:
    """dy/dt = f with f = 0 leaves y(1) = y(0) = [h, 0]: the block returns h exactly, augmentation dropped (the
    public research code's dy/dt = f + y would not); an ODE over a zero time interval is the identity too."""
    for method in sorted(TABLEAUS):
        block, h, emb = _block(method, steps=3)
        with torch.no_grad():
            block.field.conv1.weight.zero_()
            block.field.conv1.bias.zero_()
            assert torch.equal(block(h, emb), h)
    y = torch.randn(2, 3, dtype=torch.float64)
    assert torch.equal(odeint(lambda t, v: v.exp() + t, y, method="rk4", steps=5, t0=0.4, t1=0.4), y)


@pytest.mark.parametrize("method", sorted(TABLEAUS))
def test_network_output_converges_at_the_solver_order(method: str) -> None:
    """The whole network's output (float64, non-trivial weights) approaches that of a fine solve (RK4, 64 steps) at
    the order of its solver as the solver steps of every block double."""
    torch.manual_seed(0)
    net = _randomise_outputs(build_net(**SMALL, solver="rk4", solver_steps=64)).double().eval()
    x, c = (v.double() for v in _inputs(net))
    with torch.no_grad():
        reference = net(x, c)
        errors = []
        for n in (2, 4, 8):
            for block in net.ode_blocks():
                block.method, block.steps = method, n
            errors.append((net(x, c) - reference).abs().max().item())
    rates = [math.log2(a / b) for a, b in itertools.pairwise(errors)]
    assert all(abs(r - TABLEAUS[method].order) < 0.35 for r in rates), (errors, rates)
    assert errors[-1] < 0.1 * reference.abs().max().item()


def test_bf16_autocast() -> None:
    torch.manual_seed(0)
    net = _randomise_outputs(build_net(**SMALL))
    x, c = _inputs(net)
    with torch.no_grad():
        y32 = net(x, c)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(x, c)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    assert (y - y32).abs().max() < 0.05 * y32.abs().max() + 1e-3
    y.square().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in net.parameters())


def test_noise_level_and_ode_time_change_the_output() -> None:
    torch.manual_seed(0)
    net = _randomise_outputs(build_net(**SMALL)).eval()
    x, _ = _inputs(net)
    y0, y1 = net(x, torch.full((3,), -1.0)), net(x, torch.full((3,), 1.0))
    assert (y0 - y1).abs().max() > 1e-2 * y1.abs().max()
    torch.testing.assert_close(net(x, torch.tensor(1.0)), y1)  # a scalar noise label is broadcast
    # The diffusion noise level reaches every ODE block through its FiLM: each block's output moves with it.
    block = net.encoder[0].block
    h = torch.randn(1, block.channels, 8, 8).expand(2, -1, -1, -1)
    out = block(h, torch.randn(2, net.map_layer1.out_features))
    assert (out[0] - out[1]).abs().max() > 1e-3
    # The vector field depends on the ODE time t.
    field = _randomise_outputs(VectorField(6))
    torch.nn.init.normal_(field.time)
    y, film = torch.randn(1, 6, 4, 4), torch.randn(1, 12)
    assert (field(0.0, y, film) - field(1.0, y, film)).abs().max() > 1e-3


def test_channels_last_matches_contiguous() -> None:
    torch.manual_seed(0)
    net = _randomise_outputs(build_net(**SMALL)).eval()
    x, c = _inputs(net)
    with torch.no_grad():
        y = net(x, c)
        y_cl = net.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last), c)
    torch.testing.assert_close(y_cl, y, rtol=1e-5, atol=1e-5)


def test_class_labels() -> None:
    torch.manual_seed(0)
    net = _randomise_outputs(build_net(**SMALL)).eval()
    x, c = _inputs(net)
    labels = torch.tensor([0, 1, 2])
    out = net(x, c, labels)
    torch.testing.assert_close(net(x, c, torch.nn.functional.one_hot(labels, 3).float()), out)
    assert (net(x, c, torch.tensor([1, 1, 2])) - out)[0].abs().max() > 1e-5
    with pytest.raises(ValueError, match="label_dim=0"):
        build_net(**{**SMALL, "label_dim": 0})(x, c, labels)


def _net_gradients(net: torch.nn.Module, loss, adjoint: bool, steps: int) -> dict[str, torch.Tensor]:
    for block in net.ode_blocks():
        block.adjoint, block.steps = adjoint, steps
    net.zero_grad()
    loss().backward()
    return {name: p.grad.clone() for name, p in net.named_parameters()}


def test_backprop_gradients_match_finite_differences_and_reach_every_parameter() -> None:
    """Float64, dropout on (one fixed mask per forward): the gradient's derivative along a random direction of all
    parameters equals the central difference of the loss (step 1e-6, truncation ~1e-12), and no parameter is left
    without a gradient."""
    torch.manual_seed(0)
    net = _randomise_outputs(build_net(**SMALL, dropout=0.1)).double()
    x, c = (v.double() for v in _inputs(net))
    weight = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def loss() -> torch.Tensor:
        torch.manual_seed(7)  # the same dropout masks in every evaluation
        return (net(x, c, torch.tensor([0, 1, 2])) * weight).sum()

    grads = _net_gradients(net, loss, adjoint=False, steps=1)
    for name, g in grads.items():
        assert g.abs().max() > 0, name
    gen = torch.Generator().manual_seed(9)
    direction = {name: torch.randn(p.shape, generator=gen, dtype=torch.float64) for name, p in net.named_parameters()}
    h = 1e-6
    with torch.no_grad():
        values = []
        for sign in (1, -2, 1):  # theta + h v, theta - h v, back to theta
            for name, p in net.named_parameters():
                p.add_(sign * h * direction[name])
            values.append(float(loss()))
    central = (values[0] - values[1]) / (2 * h)
    analytic = float(sum((grads[name] * direction[name]).sum() for name in grads))
    assert abs(central - analytic) <= 1e-6 * abs(analytic), (central, analytic)


def test_adjoint_gradients_converge_to_backprop_at_the_solver_order() -> None:
    """Adjoint gradients differ from backprop only by the solver error of re-solving y backward: with RK4 the
    difference over all parameters shrinks ~2^4 per doubling of the steps, and every parameter gets a gradient."""
    torch.manual_seed(0)
    net = _randomise_outputs(build_net(**SMALL, dropout=0.1)).double()
    x, c = (v.double() for v in _inputs(net))
    weight = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def loss() -> torch.Tensor:
        torch.manual_seed(7)
        return (net(x, c, torch.tensor([0, 1, 2])) * weight).sum()

    diffs = []
    for steps in (1, 2, 4):
        exact, adjoint = _net_gradients(net, loss, False, steps), _net_gradients(net, loss, True, steps)
        assert all(g.abs().max() > 0 for g in adjoint.values())
        num = sum(float((exact[k] - adjoint[k]).square().sum()) for k in exact)
        diffs.append(math.sqrt(num / sum(float(g.square().sum()) for g in exact.values())))
    assert diffs[0] < 0.05 and all(a / b > 8 for a, b in itertools.pairwise(diffs)), diffs


@pytest.mark.parametrize("method", sorted(TABLEAUS))
def test_solver_order_on_an_ode_block(method: str) -> None:
    """Errors against a fine RK4 solution of the same vector field fall 2^order per halving of the step."""
    block, h, emb = _block(method)
    block.method, block.steps = "rk4", 256
    with torch.no_grad():
        reference = block(h, emb)
        block.method = method
        order = TABLEAUS[method].order
        steps = {1: [16, 32, 64], 2: [8, 16, 32], 4: [8, 16, 32]}[order]
        errors = []
        for n in steps:
            block.steps = n
            errors.append((block(h, emb) - reference).abs().max().item())
    rates = [math.log2(a / b) for a, b in itertools.pairwise(errors)]
    assert all(abs(r - order) < 0.35 for r in rates), (errors, rates)


def test_odeint_on_a_known_solution() -> None:
    # dy/dt = t y on [0, 1] from y = 1: y(1) = e^(1/2); backward from there returns to 1.
    y1 = odeint(lambda t, y: t * y, torch.ones(1, dtype=torch.float64), method="rk4", steps=16)
    assert abs(y1.item() - math.exp(0.5)) < 1e-7
    y0 = odeint(lambda t, y: t * y, y1, method="rk4", steps=16, t0=1.0, t1=0.0)
    assert abs(y0.item() - 1.0) < 1e-7


def test_adjoint_gradients_match_backprop() -> None:
    block, h, emb = _block("rk4", steps=8)
    h.requires_grad_(True)
    emb.requires_grad_(True)
    weight = torch.randn(2, 6, 5, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def grads(adjoint: bool) -> list[torch.Tensor]:
        block.adjoint = adjoint
        block.zero_grad()
        h.grad = emb.grad = None
        (block(h, emb) * weight).sum().backward()
        return [h.grad, emb.grad, *(p.grad for p in block.parameters())]

    for a, b in zip(grads(False), grads(True), strict=True):
        assert (a - b).norm() <= 1e-3 * a.norm()


def test_small_preset_is_a_quarter_of_ddpmpp_small() -> None:
    cfgs = {name: net_config(name, img_resolution=32, in_channels=3)
            for name in ("cunet-small", "cunet-small-euler2", "ddpmpp-small")}
    with torch.device("meta"):
        params = {name: sum(p.numel() for p in build_net(**cfg).parameters()) for name, cfg in cfgs.items()}
    flops = {name: count_flops(cfg) for name, cfg in cfgs.items()}
    assert params["cunet-small"] <= 0.25 * params["ddpmpp-small"]  # 0.22x
    assert flops["cunet-small"] <= 0.30 * flops["ddpmpp-small"]  # 0.23x
    assert params["cunet-small-euler2"] == params["cunet-small"]  # same weights, a solver with 2 evaluations, not 4
    assert flops["cunet-small-euler2"] <= 0.15 * flops["ddpmpp-small"]  # 0.12x


@pytest.mark.parametrize("preset", ["cunet-small", "cunet-small-euler2", "cunet-tiny"])
def test_config_round_trip(preset: str) -> None:
    torch.manual_seed(0)
    cfg = net_config(preset, img_resolution=16, in_channels=2, out_channels=2)
    assert cfg["arch"] == "cunet"
    cfg = json.loads(json.dumps(cfg))
    assert net_config(**cfg) == cfg
    net = _randomise_outputs(build_net(**cfg)).eval()
    rebuilt = build_net(**cfg).eval()
    assert net.net_config == cfg
    rebuilt.load_state_dict(net.state_dict())
    x, c = _inputs(net, n=2)
    torch.testing.assert_close(rebuilt(x, c), net(x, c))


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(solver="dopri5"), r"'dopri5'.*rk4"),
        (dict(solver_steps=0), r"solver_steps"),
        (dict(channel_mult=[1, 2, 2, 2, 2]), r"divisible"),
        (dict(augment_channels=-1), r"augment_channels"),
        (dict(num_heads=3), r"heads"),
    ],
)
def test_errors(options: dict, match: str) -> None:
    with pytest.raises(UserError, match=match) as info:
        build_net(**{**SMALL, **options})
    assert "\n" not in str(info.value)


def test_dropout_mask_is_random_in_training_only() -> None:
    torch.manual_seed(0)
    net = _randomise_outputs(build_net(**SMALL, dropout=0.5))
    x, c = _inputs(net)
    assert (net(x, c) - net(x, c)).abs().max() > 0
    net.eval()
    torch.testing.assert_close(net(x, c), net(x, c))


@torch.no_grad()
def _eval_loss(ckpt, n: int = 512) -> float:
    """The process's own training loss of the raw weights in ``ckpt`` on a fixed batch of digits, noise levels and
    noise (no FDM warm-up clamp)."""
    from fastdiffusion.data import load_dataset

    model = fd.load_model(ckpt, ema=False)
    process, gen = model.process, torch.Generator().manual_seed(123)
    data = load_dataset("digits").x
    x0 = data[torch.randint(len(data), (n,), generator=gen)]
    sigma = process.sample_sigma(n, gen)
    noise = torch.randn(process.noise_shape(x0.shape), generator=gen)
    return float(process.training_loss(model, x0, sigma, noise, 10**9))


@pytest.mark.parametrize("process, sampler", [("fdm-edm", "heun"), ("psld", "em")])
def test_a_cunet_trains_and_draws_its_grid(tmp_path, process: str, sampler: str) -> None:
    """Six steps of cunet-tiny on 8x8 digits lower the loss on a fixed evaluation batch by 10% from the model after
    one step; the checkpoint reloads as a cunet, and the grid PNG holds exactly its EMA model's samples."""
    from PIL import Image

    from fastdiffusion.training import TrainConfig, train

    def run(name: str, steps: int):
        cfg = TrainConfig(run_dir=str(tmp_path / name), data="digits", net="cunet-tiny", process=process, batch=16,
                          steps=steps, lr=2e-3, lr_warmup=2, ckpt_every=steps, grid_images=4, grid_sampler=sampler,
                          grid_nfe=1, log_every=1)  # fmt: skip
        return train(cfg, quiet=True)

    first, last = run("one", 1), run("six", 6)
    rows = [json.loads(line) for line in (tmp_path / "six" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert _eval_loss(last) < 0.9 * _eval_loss(first)
    model = fd.load_model(last)
    assert model.net_config["arch"] == "cunet" and model.data_shape == (1, 8, 8)
    noise = fd.SeededNoise(range(4))
    samples = fd.sample(model, noise.randn(model.data_shape), sampler=sampler, nfe=1, noise_fn=noise)
    want = ((samples.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[:, 0]
    png = torch.from_numpy(np.array(Image.open(tmp_path / "six" / "samples.png")))
    scale = 256 // 8  # a 2 x 2 grid of 8 px tiles with 1 px padding, upscaled by 32 without smoothing
    assert png.shape == ((2 * 9 + 1) * scale, (2 * 9 + 1) * scale)
    tiles = torch.stack([png[(1 + 9 * r) * scale::scale][:8, (1 + 9 * q) * scale::scale][:, :8]
                         for r in range(2) for q in range(2)])  # fmt: skip
    assert torch.equal(tiles, want) and want.float().std() > 10


def test_profile_net_and_info(capsys) -> None:
    p = profile_net("cunet-tiny", 8, 1, "cpu", batches=(1, 4), warmup=1, repeats=2)
    assert p["parameters"] == sum(x.numel() for x in build_net("cunet-tiny", img_resolution=8, in_channels=1)
                                  .parameters())  # fmt: skip
    assert p["flops_per_call"]["4"] == 4 * p["flops_per_call"]["1"] > 0
    by_op = p["flops_per_image_by_operator"]
    assert sum(by_op.values()) == p["flops_per_image"] == p["flops_per_call"]["1"] and list(by_op)[0] == "convolution"
    assert list(by_op.values()) == sorted(by_op.values(), reverse=True) and by_op.get("bmm", 0) > 0  # attention
    assert 0 < p["activation_bytes"]["1"] < p["activation_bytes"]["4"]
    assert all(isinstance(p["latency_s"][b], float) for b in ("1", "4")) and not p["skipped"]
    json.dumps(p)
    p = profile_net("cunet-tiny", 8, 1, "cpu", batches=(1, 4), warmup=1, repeats=1, max_cpu_seconds=0.0)
    assert p["latency_s"]["4"] is None and "estimated" in p["skipped"]["4"]

    parser = argparse.ArgumentParser()
    add_info_arguments(parser)
    args = parser.parse_args(["--net", "cunet-tiny", "--resolution", "8", "--channels", "1", "--device", "cpu",
                              "--batches", "1", "--net-opt", "solver=euler"])  # fmt: skip
    out = info_net(args)
    assert out["net_config"]["solver"] == "euler"
    printed = capsys.readouterr().out
    assert "parameters" in printed and "FLOPs per image: convolution" in printed
    with pytest.raises(UserError, match="--cuda-graphs needs a CUDA device"):
        info_net(parser.parse_args(["--net", "cunet-tiny", "--device", "cpu", "--cuda-graphs"]))
