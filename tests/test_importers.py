"""NVlabs/edm and FDM snapshots as models: the fixtures' outputs reproduced, other shapes and variants against a
float64 reference of EDM's networks (``edm_reference``), the restricted unpickler refusing code, ``convert`` round
trips, and an imported model through every EDM-family sampler, eval, trajectories, DSNO and the fast path."""

from __future__ import annotations

import copyreg
import io
import json
import math
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from edm_reference import edm_forward, edm_layout, iddpm_levels, random_tensors, write_snapshot
from safetensors import safe_open

import fastdiffusion as fd
from fastdiffusion.cli import main as cli_main
from fastdiffusion.errors import UserError
from fastdiffusion.models.safe_pickle import load_pickle
from fastdiffusion.samplers import SAMPLERS

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "edm"
NAMES = ["edm_ddpmpp_16px", "vp_ddpmpp_16px_cond10", "ve_ncsnpp_16px", "edm_adm_16px_cond10", "fdm_edm_ddpmpp_16px"]
needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"the EDM snapshot fixtures are not at {FIXTURES}")


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest per-sample relative error ||got - want|| / ||want||."""
    got, want = got.double().flatten(1), want.double().flatten(1)
    return float(((got - want).norm(dim=1) / want.norm(dim=1)).max())


def fixture_io(name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    d = np.load(FIXTURES / f"{name}.npz")
    labels = torch.from_numpy(d["class_labels"])
    return (torch.from_numpy(d["x"]), torch.from_numpy(d["sigma"]), labels if labels.shape[1] else None,
            torch.from_numpy(d["D"]))


# -- the fixtures ------------------------------------------------------------------------------------------------------
@needs_fixtures
@pytest.mark.parametrize("name", NAMES)
def test_fixture_outputs_reproduced(name):
    model = fd.load_model(FIXTURES / f"{name}.pkl")
    x, sigma, labels, want = fixture_io(name)
    with torch.no_grad():
        got = model(x, sigma, labels)
    assert got.dtype == torch.float32 and rel_err(got, want) < 1e-4
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.data_shape == (3, 16, 16) and isinstance(model, fd.ProcessModel)


@needs_fixtures
def test_fixture_processes_and_networks():
    expect = {
        "edm_ddpmpp_16px": ({"name": "edm", "sigma_data": 0.5, "P_mean": -1.2, "sigma_max": 80.0}, "ddpmpp"),
        "vp_ddpmpp_16px_cond10": ({"name": "vp", "beta_d": 19.9, "beta_min": 0.1, "M": 1000}, "ddpmpp"),
        "ve_ncsnpp_16px": ({"name": "ve", "sigma_min": 0.02, "sigma_max": 100.0}, "ncsnpp"),
        "edm_adm_16px_cond10": ({"name": "edm"}, "adm"),
        "fdm_edm_ddpmpp_16px": ({"name": "fdm-edm", "multiplier": 2.0, "sigma_min": 0.002, "sigma_max": 80.0},
                                "ddpmpp"),
    }
    for name, (process, arch) in expect.items():
        model = fd.load_model(FIXTURES / f"{name}.pkl")
        assert process.items() <= model.process.config().items(), name
        assert model.net_config["arch"] == arch
        assert model.net_config["label_dim"] == (10 if "cond10" in name else 0)


@needs_fixtures
@pytest.mark.parametrize("name", ["vp_ddpmpp_16px_cond10", "edm_adm_16px_cond10"])
def test_class_labels_condition_the_output(name):
    model = fd.load_model(FIXTURES / f"{name}.pkl")
    x, sigma, labels, want = fixture_io(name)
    with torch.no_grad():
        other = model(x, sigma, labels.roll(1, dims=1))
        by_index = model(x, sigma, labels.argmax(1))  # integer classes are one-hot encoded
        unconditional = model(x, sigma)  # EDM feeds an all-zero label
        zeros = model(x, sigma, torch.zeros_like(labels))
    assert rel_err(by_index, want) < 1e-4
    assert rel_err(other, want) > 1e-3
    assert torch.equal(unconditional, zeros)


# -- other shapes and variants, against the float64 reference of EDM's networks ----------------------------------------
def _precond_reference(precond: str, attrs: dict, sigma: torch.Tensor) -> tuple:
    """(c_skip, c_out, c_in, c_noise) of EDM's and FDM's preconditionings, float64."""
    s = sigma.double()
    if precond in ("EDMPrecond", "FDM_EDMPrecond"):
        sd = attrs["sigma_data"]
        c = (sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt(), 1 / (s**2 + sd**2).sqrt(), s.log() / 4)
    elif precond in ("VPPrecond", "FDM_VPPrecond"):
        t = ((attrs["beta_min"] ** 2 + 2 * attrs["beta_d"] * (1 + s**2).log()).sqrt() - attrs["beta_min"])
        c = (torch.ones_like(s), -s, 1 / (s**2 + 1).sqrt(), (attrs["M"] - 1) * t / attrs["beta_d"])
    else:
        c = (torch.ones_like(s), s, torch.ones_like(s), (s / 2).log())
    if precond.startswith("FDM_"):
        tau = (s - attrs["sigma_min"]) / (attrs["sigma_max"] - attrs["sigma_min"])
        m = 1.0 if precond == "FDM_VEPrecond" else attrs["fdm_multiplier"]  # FDM's VE code leaves m out
        b = m * (attrs["fdm_beta_min"] * tau + 0.5 * attrs["fdm_beta_d"] * tau**2)
        c = (c[0], c[1], (-b).exp() * (1 + b), c[3])
    return c


def _vp_sigma(attrs: dict, t: float) -> float:
    return math.sqrt(math.exp(0.5 * attrs["beta_d"] * t**2 + attrs["beta_min"] * t) - 1)


PRECONDS = {
    "EDMPrecond": dict(sigma_min=0, sigma_max=float("inf"), sigma_data=0.6),
    "VPPrecond": dict(beta_d=15.0, beta_min=0.2, M=500, epsilon_t=1e-4),
    "VEPrecond": dict(sigma_min=0.01, sigma_max=50.0),
    "FDM_EDMPrecond": dict(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, fdm_beta_d=19.9, fdm_beta_min=0.1,
                           fdm_multiplier=3.0),
    "FDM_VPPrecond": dict(beta_d=19.9, beta_min=0.1, M=1000, epsilon_t=1e-5, fdm_beta_d=15.0, fdm_beta_min=0.2,
                          fdm_multiplier=2.0),
    "FDM_VEPrecond": dict(sigma_min=0.02, sigma_max=100.0, fdm_beta_d=19.9, fdm_beta_min=0.1, fdm_multiplier=3.0),
}
for _a in (PRECONDS["VPPrecond"], PRECONDS["FDM_VPPrecond"]):
    _a.update(sigma_min=_vp_sigma(_a, _a["epsilon_t"]), sigma_max=_vp_sigma(_a, 1.0))

SONG_VARIANTS = [
    # NCSN++-like with every option off its default: skip encoder and decoder, Fourier embedding, 3 levels, labels,
    # augmentation labels, two blocks, attention at two resolutions.
    dict(img_resolution=16, in_channels=3, out_channels=3, label_dim=3, augment_dim=9, model_channels=8,
         channel_mult=[1, 2, 2], channel_mult_emb=2, num_blocks=2, attn_resolutions=[8, 4], dropout=0.1,
         embedding_type="fourier", channel_mult_noise=2, encoder_type="skip", decoder_type="skip",
         resample_filter=[1, 3, 3, 1]),
    # residual encoder with the box filter, skip decoder, one channel, wider first level, label dropout.
    dict(img_resolution=8, in_channels=1, out_channels=1, model_channels=16, channel_mult=[2, 1], num_blocks=1,
         attn_resolutions=[8], encoder_type="residual", decoder_type="skip", label_dim=2, label_dropout=0.1),
    # EDM's defaults except the size: channel_mult [1, 2, 2, 2], four blocks, attention at 16 (a 32 px image).
    dict(img_resolution=32, in_channels=3, out_channels=3, model_channels=8, resample_filter=[1, 3, 3, 1],
         encoder_type="standard", decoder_type="skip"),
]
ADM_VARIANTS = [
    # 0 heads at 32 channels (no attention even where asked), 2 heads at 128; labels and augmentation labels.
    dict(img_resolution=16, in_channels=3, out_channels=3, label_dim=5, augment_dim=4, model_channels=32,
         channel_mult=[1, 4], num_blocks=2, attn_resolutions=[16, 8], label_dropout=0.1),
    # three levels: 3 heads at 192 channels (4 px), 2 in the middle block at 128 (2 px)
    dict(img_resolution=8, in_channels=2, out_channels=2, model_channels=64, channel_mult=[1, 3, 2],
         channel_mult_emb=2, num_blocks=1, attn_resolutions=[4]),
]


def _variant(tmp_path: Path, kind: str, cfg: dict, precond: str, seed: int = 0, **kw) -> tuple:
    layout = edm_layout(kind, cfg)
    tensors = random_tensors(layout, seed)
    attrs = {**PRECONDS[precond], "img_resolution": cfg["img_resolution"], "img_channels": cfg["in_channels"],
             "label_dim": cfg.get("label_dim", 0), "use_fp16": False, **kw.pop("attrs", {})}
    path = tmp_path / f"{kind}-{precond}-{seed}.pkl"
    write_snapshot(path, precond, attrs, kind, cfg, tensors, tmp_path / "marker", **kw)
    return path, layout, tensors, attrs


def _inputs(cfg: dict, n: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cfg["in_channels"], cfg["img_resolution"], cfg["img_resolution"], generator=g)
    labels = None
    if cfg.get("label_dim"):
        labels = torch.nn.functional.one_hot(torch.arange(n) % cfg["label_dim"], cfg["label_dim"]).float()
    return x, torch.tensor([0.05, 1.0, 30.0][:n]), labels


def _reference(layout, tensors, precond, attrs, x, sigma, labels, augment=None) -> torch.Tensor:
    c_skip, c_out, c_in, c_noise = (c.reshape(-1, 1, 1, 1) for c in _precond_reference(precond, attrs, sigma))
    if labels is None and layout["cfg"]["label_dim"]:
        labels = torch.zeros(x.shape[0], layout["cfg"]["label_dim"])
    f = edm_forward(layout, tensors, c_in * x.double(), c_noise.flatten(), labels, augment)
    return c_skip * x.double() + c_out * f


@pytest.mark.parametrize("cfg", SONG_VARIANTS, ids=["ncsnpp-skip-skip", "residual-box", "edm-defaults-32px"])
def test_song_unet_variants_match_edm(tmp_path, cfg):
    path, layout, tensors, attrs = _variant(tmp_path, "SongUNet", cfg, "EDMPrecond")
    model = fd.load_model(path)
    x, sigma, labels = _inputs(cfg)
    with torch.no_grad():
        got = model(x, sigma, labels)
    assert rel_err(got, _reference(layout, tensors, "EDMPrecond", attrs, x, sigma, labels)) < 1e-4
    if cfg.get("augment_dim"):  # augmentation labels reach the network too (zeros = none, as at sampling)
        aug = torch.randn(x.shape[0], cfg["augment_dim"], generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            f = model.net(x, torch.tensor([0.1, -0.5, 2.0]), labels, aug)
        want = edm_forward(layout, tensors, x, torch.tensor([0.1, -0.5, 2.0]), labels, aug)
        assert rel_err(f, want) < 1e-4
    assert not (tmp_path / "marker").exists()


@pytest.mark.parametrize("cfg", ADM_VARIANTS, ids=["heads-0-and-2", "three-levels-3-heads"])
def test_adm_variants_match_edm(tmp_path, cfg):
    path, layout, tensors, attrs = _variant(tmp_path, "DhariwalUNet", cfg, "EDMPrecond")
    model = fd.load_model(path)
    x, sigma, labels = _inputs(cfg)
    with torch.no_grad():
        got = model(x, sigma, labels)
    assert rel_err(got, _reference(layout, tensors, "EDMPrecond", attrs, x, sigma, labels)) < 1e-4
    heads = {m.num_heads for m in model.net.modules() if hasattr(m, "num_heads")}
    assert heads == ({0, 2} if cfg["model_channels"] == 32 else {0, 2, 3})
    if cfg.get("augment_dim"):
        aug = torch.randn(x.shape[0], cfg["augment_dim"], generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            f = model.net(x, torch.tensor([0.1, -0.5, 2.0]), labels, aug)
        assert rel_err(f, edm_forward(layout, tensors, x, torch.tensor([0.1, -0.5, 2.0]), labels, aug)) < 1e-4


@pytest.mark.parametrize("precond", list(PRECONDS))
def test_every_preconditioning_matches_edm(tmp_path, precond):
    cfg = SONG_VARIANTS[1]
    path, layout, tensors, attrs = _variant(tmp_path, "SongUNet", cfg, precond)
    model = fd.load_model(path)
    x, sigma, labels = _inputs(cfg)
    with torch.no_grad():
        got = model(x, sigma, labels)
    assert rel_err(got, _reference(layout, tensors, precond, attrs, x, sigma, labels)) < 1e-4
    lo, hi = model.sampling_range()
    assert lo >= 0.002 and hi <= 100.0


def test_iddpm_preconditioning_matches_edm(tmp_path):
    m, cfg = 1000, {**ADM_VARIANTS[1], "out_channels": 4}  # the variance channels: C more outputs
    layout = edm_layout("DhariwalUNet", cfg)
    tensors = random_tensors(layout)
    u = iddpm_levels(m)
    attrs = dict(img_resolution=8, img_channels=2, label_dim=0, use_fp16=False, C_1=0.001, C_2=0.008, M=m,
                 sigma_min=float(u[m - 1]), sigma_max=float(u[0]))
    write_snapshot(tmp_path / "iddpm.pkl", "iDDPMPrecond", attrs, "DhariwalUNet", cfg, tensors, tmp_path / "marker",
                   precond_buffers={"u": u})
    model = fd.load_model(tmp_path / "iddpm.pkl")
    assert model.sampling_range() == pytest.approx((float(u[m - 1]), float(u[0])), rel=1e-6)
    x = torch.randn(4, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([float(u[m - 1]), 0.3, 7.0, 80.0])
    s = sigma.double().reshape(-1, 1, 1, 1)
    c_noise = m - 1 - (sigma.double()[:, None] - u.double()[None]).abs().argmin(1).double()  # EDM's round_sigma
    with torch.no_grad():
        got = model(x, sigma)
    f = edm_forward(layout, tensors, x.double() / (s**2 + 1).sqrt(), c_noise, None)[:, :2]
    assert rel_err(got, x.double() - s * f) < 1e-4
    assert model.net_config["out_channels"] == 2


def test_edm_loss_settings_and_fp16_snapshots(tmp_path):
    cfg = SONG_VARIANTS[1]
    layout = edm_layout("SongUNet", cfg)
    half = {k: v.half() for k, v in random_tensors(layout).items()}
    attrs = {**PRECONDS["EDMPrecond"], "img_resolution": 8, "img_channels": 1, "label_dim": 2}
    write_snapshot(tmp_path / "fp16.pkl", "EDMPrecond", {**attrs, "use_fp16": True}, "SongUNet", cfg, half,
                   tmp_path / "marker", loss=("EDMLoss", dict(P_mean=-1.0, P_std=1.4, sigma_data=0.6)))
    write_snapshot(tmp_path / "fp32.pkl", "EDMPrecond", {**attrs, "use_fp16": False}, "SongUNet", cfg,
                   {k: v.float() for k, v in half.items()}, tmp_path / "marker")
    fp16, fp32 = fd.load_model(tmp_path / "fp16.pkl"), fd.load_model(tmp_path / "fp32.pkl")
    assert all(p.dtype == torch.float32 for p in fp16.parameters())
    x, sigma, labels = _inputs(cfg)
    with torch.no_grad():
        assert torch.equal(fp16(x, sigma, labels), fp32(x, sigma, labels))
    assert (fp16.process.P_mean, fp16.process.P_std, fp16.process.sigma_data) == (-1.0, 1.4, 0.6)
    assert (fp32.process.P_mean, fp32.process.P_std) == (-1.2, 1.2)  # no loss record: EDM's defaults


def test_a_cifar10_size_snapshot_loads_every_weight(tmp_path):
    """EDM's CIFAR-10 DDPM++ (55.7M parameters): every converted weight equals its snapshot tensor (load time is
    measured by benchmarks/importers/gpu.py, not asserted)."""
    cfg = dict(img_resolution=32, in_channels=3, out_channels=3, model_channels=128, channel_mult=[2, 2, 2],
               num_blocks=4, attn_resolutions=[16], dropout=0.13, augment_dim=9)
    path, layout, tensors, _ = _variant(tmp_path, "SongUNet", cfg, "VPPrecond")
    model = fd.load_model(path)
    assert 55.5e6 < sum(p.numel() for p in model.net.parameters()) < 56e6
    ours = sorted(float(p.detach().double().sum()) for p in model.net.parameters())
    theirs = sorted(float(v.double().sum()) for k, v in tensors.items() if "resample_filter" not in k)
    assert len(ours) == len(theirs) and np.allclose(ours, theirs, rtol=1e-9, atol=1e-9)


# -- refused input and the restricted unpickler ------------------------------------------------------------------------
class _Calls:
    """Pickles as a call of ``fn(*args)``: what a malicious pickle does."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _legacy_blob(payload: object) -> bytes:
    """A legacy ``torch.save`` header followed by ``payload`` pickled where the storage should be."""
    f = io.BytesIO()
    for part in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}, payload, []):
        pickle.dump(part, f, protocol=2)
    return f.getvalue()


def _malicious(marker: Path) -> dict[str, object]:
    touch = f"open({str(marker)!r}, 'w').write('ran')"
    return {
        "os.system": _Calls(os.system, f"touch {marker}"),
        "builtins.exec": _Calls(exec, touch),
        "builtins.eval": _Calls(eval, touch),
        "subprocess.call": _Calls(subprocess.call, ["touch", str(marker)]),
        "inside a snapshot": {"ema": None, "dataset_kwargs": {"path": _Calls(os.system, f"touch {marker}")}},
        "inside a tensor storage": _Calls(torch.storage._load_from_bytes,
                                          _legacy_blob(_Calls(os.system, f"touch {marker}"))),
        "getattr chain": _Calls(getattr, _Calls(__import__, "os"), "system"),
    }


@pytest.mark.parametrize("case", list(_malicious(Path("m"))))
def test_malicious_pickles_are_refused_and_nothing_runs(tmp_path, case):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_malicious(marker)[case], protocol=4))
    with pytest.raises(UserError, match=r"evil\.pkl: refused to load .*not a tensor, container or known record"):
        fd.load_model(path)
    assert not marker.exists()


def test_extension_codes_go_through_the_same_check(tmp_path):
    marker = tmp_path / "ran"
    copyreg.add_extension("posix", "system", 0xBEEF)
    try:
        data = pickle.dumps(_Calls(os.system, f"touch {marker}"), protocol=2)
    finally:
        copyreg.remove_extension("posix", "system", 0xBEEF)
    assert b"\x83" in data or b"\x82" in data  # EXT2 / EXT1 opcode, not a GLOBAL
    (tmp_path / "evil.pkl").write_bytes(data)
    copyreg.add_extension("posix", "system", 0xBEEF)  # even where the registry would resolve it
    try:
        with pytest.raises(UserError, match="posix.system"):
            fd.load_model(tmp_path / "evil.pkl")
    finally:
        copyreg.remove_extension("posix", "system", 0xBEEF)
    assert not marker.exists()


def test_snapshot_source_text_is_never_run(tmp_path):
    path, *_ = _variant(tmp_path, "SongUNet", SONG_VARIANTS[1], "VEPrecond")
    assert b"the snapshot source ran" in path.read_bytes()
    fd.load_model(path)
    load_pickle(path)
    assert not (tmp_path / "marker").exists()


def test_unsupported_classes_and_options_are_named(tmp_path):
    cfg = SONG_VARIANTS[1]
    layout = edm_layout("SongUNet", cfg)
    tensors = random_tensors(layout)
    attrs = {**PRECONDS["EDMPrecond"], "img_resolution": 8, "img_channels": 1, "label_dim": 2}
    cases = [("MyPrecond", "SongUNet", cfg, r"unsupported preconditioning class 'MyPrecond'"),
             ("EDMPrecond", "MyUNet", cfg, r"unsupported network class 'MyUNet'"),
             ("EDMPrecond", "SongUNet", {**cfg, "fancy": 1}, r"SongUNet option 'fancy' is not supported")]
    for precond, net, kwargs, message in cases:
        write_snapshot(tmp_path / "x.pkl", precond, attrs, net, kwargs, tensors, tmp_path / "marker")
        with pytest.raises(UserError, match=message):
            fd.load_model(tmp_path / "x.pkl")
    write_snapshot(tmp_path / "x.pkl", "EDMPrecond", attrs, "SongUNet", cfg,
                   {k: v for k, v in tensors.items() if "map_layer1" not in k}, tmp_path / "marker")
    with pytest.raises(UserError, match="tensors do not fit its SongUNet .*map_layer1"):
        fd.load_model(tmp_path / "x.pkl")
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(UserError, match="not an NVlabs/edm or FDM network snapshot"):
        fd.load_model(tmp_path / "list.pkl")
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="junk.pkl: refused to load"):
        fd.load_model(tmp_path / "junk.pkl")
    assert not (tmp_path / "marker").exists()


@needs_fixtures
def test_raw_weights_of_a_snapshot_are_refused():
    with pytest.raises(UserError, match="only its EMA network"):
        fd.load_model(FIXTURES / "edm_ddpmpp_16px.pkl", ema=False)


# -- convert and everything downstream ---------------------------------------------------------------------------------
@needs_fixtures
@pytest.mark.parametrize("name", NAMES)
def test_convert_round_trip_is_exact_and_pickle_free(tmp_path, name, capsys):
    dest = tmp_path / "model.safetensors"
    assert cli_main(["convert", str(FIXTURES / f"{name}.pkl"), str(dest)]) == 0
    assert f"wrote {dest}" in capsys.readouterr().out
    imported, converted = fd.load_model(FIXTURES / f"{name}.pkl"), fd.load_model(dest)
    x, sigma, labels, _ = fixture_io(name)
    with torch.no_grad():
        assert torch.equal(imported(x, sigma, labels), converted(x, sigma, labels))
    with safe_open(str(dest), "pt") as f:
        meta = json.loads(f.metadata()["fastdiffusion"])
    assert meta == json.loads(json.dumps(fd.models.model_meta(imported)))


def test_convert_refuses_a_wrong_destination(tmp_path, capsys):
    assert cli_main(["convert", str(tmp_path), str(tmp_path / "out.pt")]) == 2
    assert "DEST.safetensors" in capsys.readouterr().err


def _valid_nfe(spec) -> int:
    for nfe in range(5, 20):
        try:
            spec.steps(nfe)
            return nfe
        except UserError:
            continue
    raise AssertionError(spec.name)


@needs_fixtures
def test_every_edm_family_sampler_runs_on_an_imported_model():
    model = fd.load_model(FIXTURES / "vp_ddpmpp_16px_cond10.pkl")
    noise = torch.randn(2, *model.data_shape, generator=torch.Generator().manual_seed(0))
    labels = torch.eye(10)[[3, 7]]
    ran = []
    for name, spec in sorted(SAMPLERS.items()):
        if spec.family != "edm":
            continue
        calls: list[int] = []
        hook = model.net.register_forward_hook(lambda *a, calls=calls: calls.append(1))
        nfe = _valid_nfe(spec)
        with torch.no_grad():
            out = fd.sample(model, noise, sampler=name, nfe=nfe, class_labels=labels,
                            noise_fn=lambda x: torch.zeros_like(x))
        hook.remove()
        assert out.shape == noise.shape and torch.isfinite(out).all() and len(calls) == nfe, name
        ran.append(name)
    assert {"euler", "heun", "ddim", "dpmpp-2m", "unipc"} <= set(ran)


@needs_fixtures
def test_fast_path_on_cpu_keeps_the_outputs():
    model = fd.load_model(FIXTURES / "edm_adm_16px_cond10.pkl")
    x, sigma, labels, want = fixture_io("edm_adm_16px_cond10")
    fd.accelerate(model, "cpu")
    with torch.no_grad():
        assert rel_err(model(x, sigma, labels), want) < 1e-4


@needs_fixtures
def test_eval_runs_on_an_imported_snapshot(tmp_path, capsys):
    reference, out = tmp_path / "reference.npz", tmp_path / "eval.json"
    np.savez(reference, images=np.random.default_rng(0).integers(0, 256, (32, 3, 16, 16), dtype=np.uint8))
    path = FIXTURES / "vp_ddpmpp_16px_cond10.pkl"
    assert fd.models.is_model_path(path)
    rc = cli_main(["eval", str(path), "--n", "8", "--sampler", "euler", "--nfe", "3", "--metrics", "sliced",
                   "--reference", str(reference), "--class", "random", "--batch", "8", "--device", "cpu", "--quiet",
                   "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    result = json.loads(out.read_text())["results"]["sliced"]
    assert result["value"] > 0 and result["protocol"]["n_generated"] == 8
    assert result["protocol"]["model_file"] == str(path) and len(result["protocol"]["model_sha256"]) == 64


def _shards(root: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {f"{p.name}/{k}": v for p in sorted(root.glob("shard-*.safetensors")) for k, v in load_file(p).items()}


@needs_fixtures
@pytest.mark.parametrize("name", ["fdm_edm_ddpmpp_16px", "edm_adm_16px_cond10"])
def test_trajectories_of_a_snapshot_equal_its_converted_file_and_distill(tmp_path, name):
    snapshot, converted = FIXTURES / f"{name}.pkl", tmp_path / "converted.safetensors"
    assert cli_main(["convert", str(snapshot), str(converted)]) == 0
    args = ["--sampler", "heun", "--nfe", "9", "--times", "2", "--seeds", "0-5", "--shard-size", "4", "--dtype",
            "fp32", "--batch", "3", "--device", "cpu", "--quiet"]
    for model, out in ((snapshot, "a"), (converted, "b")):
        assert cli_main(["distill", "trajectories", str(model), "--out", str(tmp_path / out), *args]) == 0
    a, b = _shards(tmp_path / "a"), _shards(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    manifests = [json.loads((tmp_path / d / "manifest.json").read_text()) for d in "ab"]
    assert manifests[0]["teacher"]["meta"] == manifests[1]["teacher"]["meta"]
    assert manifests[0]["teacher"]["path"] == str(snapshot)

    run = tmp_path / "student"
    assert cli_main(["distill", "train", str(tmp_path / "a"), "--modes", "1", "--run-dir", str(run), "--steps", "2",
                     "--batch", "2", "--holdout", "2", "--ckpt-every", "2", "--log-every", "1", "--grid-images", "4",
                     "--device", "cpu", "--quiet"]) == 0
    student = fd.load_model(run / "student.safetensors")
    noise = torch.randn(2, *student.data_shape)
    with torch.no_grad():
        assert torch.isfinite(fd.sample(student, noise, sampler="dsno", nfe=1)).all()
