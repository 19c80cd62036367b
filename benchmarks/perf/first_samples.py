"""Issue 21: what the first samples of a job cost with and without torch.compile, and the numbers behind
``fastpath.COMPILE_COSTS``.

1. **cli**: trains a small model (``fastdiffusion train --steps 20 --no-compile``), then times
   ``python -m fastdiffusion.cli sample RUN --seeds 0-63 --sampler heun --nfe 35`` in fresh processes: ``--no-compile``;
   ``--compile`` with an empty Inductor cache (cold), then again on the cache it left (warm); the automatic default
   with an empty cache and on the warm one (eager and automatic runs ``--repeats`` times, alternating, with medians:
   process times vary by about a second). With ``--prev-src DIR`` the previous source tree's default runs too, cold
   and warm (``PYTHONPATH=DIR``). Each run records its process wall time, the time in ``fastdiffusion.cli.main``, the
   time in ``generate`` and the fast path the model sampled with (the compile decision and its numbers).
2. **big**: the same for a job of ``--big-seeds``: no compile, forced compile, then automatic on the cache the forced
   run left (and the small job's ``--compile`` runs before it): the automatic rule should compile where it pays.
3. **measure**: per network (``NET:BATCH:RES:CHANNELS``), in fresh processes with an empty cache, then on the cache it
   left: the sampling network (bf16, channels_last, CUDA graphs on a GPU) eager and compiled. The compile cost is the
   first three compiled calls (compile, CUDA-graph warm-up and recording) less three steady compiled calls; the
   speed-up is eager over compiled seconds per call (medians). A spec may end in a variant, which the cost fit
   leaves out: ``:regional`` compiles each U-Net block on its own instead (blocks of one shape share their code; no
   CUDA graphs); ``:freezing`` compiles with Inductor's ``freezing`` (weights folded in as constants, inference
   only); ``:cudnn-all`` lets cuDNN's autotuner try every convolution algorithm (``benchmark_limit = 0``, not 10);
   ``:untuned`` compiles each pointwise kernel with one Triton configuration instead of benchmarking several
   (``triton.autotune_pointwise = False``). Compiled runs record where the compile went (Dynamo's ``compile_times``:
   tracing, lowering, Triton compiles, autotuning).
4. **train**: the same for a training step of ``--train-net`` on ``--data`` at ``--batch``.
5. **fifty**: issue 21's 50,000-sample target: a ``--fifty-net`` model (one training step: its weights do not change
   the time) sampled for ``--fifty-seeds`` at ``--fifty-batch`` by the automatic default on the cache that ``measure``
   of the same network and batch left (warm), then on an empty cache (cold), against the steady state: the compiled
   network's seconds per call (that ``measure``, in a fresh process) x the run's network calls. Target: within 10%,
   compile time included. (Warm first: a call's time limit cuts the cold run, the longer one, if anything.)

The summary fits ``CompileCosts``: per cache state the line through the networks' (modules, compile seconds), the
smallest speed-up, and the training cost factor and step speed-up.

    PYTHONPATH=$PWD python benchmarks/perf/first_samples.py --out results/first_samples.json [--prev-src DIR]
    # on the CPU, in minutes:
    PYTHONPATH=$PWD python benchmarks/perf/first_samples.py --device cpu --net ddpmpp-tiny --data digits16 \\
        --seeds 0-3 --nfe 3 --train-steps 2 --big-seeds 0-7 --measure ddpmpp-tiny:4:16:1 --train-net ddpmpp-tiny \\
        --batch 8 --calls 3 --out /tmp/first_samples.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PARTS = ("cli", "measure", "train", "big", "fifty")  # in the order they run
# Where a compile goes (Dynamo's compile_times; nested: tracing and the backend lie inside compile_inner, Triton's
# compiles inside the wait, autotuning at the first run of each kernel).
PHASES = ("_compile.compile_inner", "bytecode_tracing", "create_aot_dispatcher_function", "GraphLowering.codegen",
          "async_compile.wait", "PyCodeCache.load_by_key_path", "CachingAutotuner.benchmark_all_configs")


def _sync(device: str) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], object], device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------ workers (fresh processes)


def worker_cli(out: Path, argv: list[str]) -> None:
    """``fastdiffusion.cli.main(argv)`` with its import, main and ``generate`` times and the model's fast path."""
    t0 = time.perf_counter()
    import fastdiffusion.cli as cli
    import fastdiffusion.fastpath as fastpath
    import fastdiffusion.sampling as sampling

    import_s = time.perf_counter() - t0
    found: dict = {}
    real_generate, real_accelerate = sampling.generate, fastpath.accelerate

    def generate(*args, **kwargs):  # cmd_sample imports it from the module at call time
        _sync(str(kwargs.get("device", "cpu")))
        t = time.perf_counter()
        x = real_generate(*args, **kwargs)
        _sync(str(kwargs.get("device", "cpu")))
        found["generate_s"] = time.perf_counter() - t
        return x

    def accelerate(model, *args, **kwargs):
        found["model"] = real_accelerate(model, *args, **kwargs)
        return found["model"]

    sampling.generate, fastpath.accelerate = generate, accelerate
    t0 = time.perf_counter()
    rc = cli.main(argv)
    result = {"rc": rc, "import_s": import_s, "main_s": time.perf_counter() - t0,
              "generate_s": found.get("generate_s"),
              "fast_path": fastpath.fast_path_of(found["model"]) if "model" in found else None}
    out.write_text(json.dumps(result))


def worker_measure(out: Path, spec: str, calls: int, device: str) -> None:
    """Seconds per call of a sampling network eager and compiled, and the compile cost (see the module docstring)."""
    import copy

    import torch

    from fastdiffusion.fastpath import accelerate, module_count
    from fastdiffusion.models import build_model
    from fastdiffusion.nets import net_config
    from fastdiffusion.processes import make_process

    net, batch, res, ch, *mode = spec.split(":")
    batch, res, ch = int(batch), int(res), int(ch)
    options = {"freezing": {"freezing": True}, "untuned": {"triton.autotune_pointwise": False}}
    if mode not in ([], ["regional"], ["cudnn-all"], *([k] for k in options)):
        raise SystemExit(f"--measure {spec}: unknown variant {':'.join(mode)} (regional, freezing, cudnn-all or "
                         "untuned)")
    if mode == ["cudnn-all"]:
        torch.backends.cudnn.benchmark_limit = 0
    torch.manual_seed(0)
    meta = {"process": make_process("edm").config(), "data_shape": [ch, res, res],
            "net": net_config(net, img_resolution=res, in_channels=ch, out_channels=ch)}
    eager = build_model(meta).to(device).eval()
    compiled = copy.deepcopy(eager)
    modules, params = module_count(eager.net), sum(p.numel() for p in eager.net.parameters())
    accelerate(eager, device, compile=False)
    if mode == ["regional"]:
        from fastdiffusion.fastpath import use_compile_cache
        from fastdiffusion.nets.unet import UNetBlock

        accelerate(compiled, device, compile=False)
        use_compile_cache()
        for block in compiled.net.modules():
            if isinstance(block, UNetBlock):
                block.compile(dynamic=False)
    else:
        accelerate(compiled, device, compile=True, compile_options=options.get(mode[0]) if mode else None)
    x = torch.randn(batch, ch, res, res, device=device)
    c_noise = torch.full((batch,), 0.25, device=device)

    def call(model) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                return model.net(x, c_noise)

        return run

    _timed(call(eager), device)  # cuDNN's algorithm search
    eager_s = statistics.median(_timed(call(eager), device) for _ in range(calls))
    first = [_timed(call(compiled), device) for _ in range(3)]
    compiled_s = statistics.median(_timed(call(compiled), device) for _ in range(calls))
    import torch._dynamo.utils

    names, seconds = torch._dynamo.utils.compile_times(repr="csv", aggregate=True)
    out.write_text(json.dumps({"spec": spec, "modules": modules, "params": params, "eager_s": eager_s,
                               "first_compiled_calls_s": first, "compiled_s": compiled_s,
                               "compile_s": sum(first) - 3 * compiled_s, "speedup": eager_s / compiled_s,
                               "compile_phases_s": {n: float(v) for n, v in zip(names, seconds, strict=True)}}))


def worker_train(out: Path, net: str, data: str, batch: int, calls: int, device: str) -> None:
    """Seconds per training step eager and compiled, and the compile cost of the step."""
    import torch

    from fastdiffusion.fastpath import module_count, use_compile_cache
    from fastdiffusion.training.config import TrainConfig
    from fastdiffusion.training.loop import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(run_dir=tmp, data=data, net=net, batch=batch, steps=10**6, compile=False, device=device,
                          ckpt_every=10**6, log_every=10**6)
        trainer = Trainer(cfg, quiet=True)
        try:
            step = trainer.train_step
            for _ in range(2):  # cuDNN's algorithm search, Adam's state
                _timed(step, device)
            eager_s = statistics.median(_timed(step, device) for _ in range(calls))
            use_compile_cache()
            trainer.ddp = torch.compile(trainer.ddp)  # what --compile does
            first = [_timed(step, device) for _ in range(3)]
            compiled_s = statistics.median(_timed(step, device) for _ in range(calls))
            modules = module_count(trainer.model.net)
        finally:
            trainer.close()
    out.write_text(json.dumps({"net": net, "data": data, "batch": batch, "modules": modules, "eager_s": eager_s,
                               "first_compiled_steps_s": first, "compiled_s": compiled_s,
                               "compile_s": sum(first) - 3 * compiled_s, "speedup": eager_s / compiled_s}))


# ------------------------------------------------------------------------------------------------- the driver


def child(args: argparse.Namespace, worker: list[str], cache: Path, src: Path = ROOT, env: dict | None = None) -> dict:
    """Run a worker in a fresh process with Inductor's cache at ``cache``, ``src`` first on the path and ``env``
    added to the environment."""
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "PYTHONPATH": str(src), "PYTHONUNBUFFERED": "1",
           **(env or {})}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, __file__, "--worker", *worker[:1], str(out), *worker[1:]], env=env,
                              capture_output=True, text=True, timeout=args.child_timeout)
        rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-1500:]
    except subprocess.TimeoutExpired:
        rc, tail = "timeout", ""
    wall = time.perf_counter() - t0
    result = json.loads(out.read_text()) if out.stat().st_size else {}
    out.unlink()
    return {"wall_s": wall, **result, **({} if rc == 0 else {"error": {"rc": rc, "output": tail}})}


def cli_runs(args: argparse.Namespace, run: Path, work: Path, seeds: str, tag: str
             ) -> list[tuple[str, list, Path, dict]]:
    """(label, flags, cache dir, environment) of the sample runs, in the order they must run (a warm run after its
    cold one). The small job's eager and automatic runs are repeated ``--repeats`` times, alternating, as process
    times vary by about a second; each cold automatic run gets an empty cache of its own."""
    fresh = work / "cache-cli-compile"  # the big job's runs share the cache of the small job's --compile runs
    sample = ["sample", str(run), "--seeds", seeds, "--sampler", args.sampler, "--nfe", str(args.nfe), "--device",
              args.device, "--out", str(work / f"{tag}.npz"), "--quiet"]
    if tag == "big":
        return [("big no-compile", [*sample, "--no-compile"], work / "cache-unused", {}),
                ("big compile", [*sample, "--compile"], fresh, {}),
                ("big auto (after big compile)", sample, fresh, {}),
                ("big auto, one compile thread", sample, fresh, {"TORCHINDUCTOR_COMPILE_THREADS": "1"})]
    runs = [("compile, cold cache", [*sample, "--compile"], fresh, {}),
            ("compile, warm cache", [*sample, "--compile"], fresh, {})]
    for r in range(args.repeats):
        runs += [("no-compile", [*sample, "--no-compile"], work / "cache-unused", {}),
                 ("auto, cold cache", sample, work / f"cache-cli-auto-{r}", {}),
                 ("auto, warm cache (after --compile)", sample, fresh, {})]
    return runs


def fifty(args: argparse.Namespace, work: Path, results: dict, save: Callable[[], None]) -> None:
    """Part 5 (see the module docstring): results['fifty'] holds the runs and their ratio to the steady state."""
    run = work / "run-fifty"
    if not (run / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "fastdiffusion.cli", "train", "--data", args.data, "--net",
                        args.fifty_net, "--steps", "1", "--batch", "8", "--no-compile", "--device", args.device,
                        "--run-dir", str(run), "--ckpt-every", "1", "--grid-images", "4", "--quiet"], check=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    from fastdiffusion.models import load_model

    channels, _, resolution = load_model(run).data_shape
    spec = f"{args.fifty_net}:{args.fifty_batch}:{resolution}:{channels}"
    out = results.setdefault("fifty", {"spec": spec, "runs": []})
    # The measure compiles the same network at the same batch into the cache that the warm run then finds (its
    # marker included), so the warm run needs no run before it; the cold run gets an empty cache of its own.
    out["measure"] = child(args, ["measure", spec, str(args.calls), args.device], work / "cache-fifty")
    save()
    seeds = args.fifty_seeds
    n = len(parse_seed_list(seeds))
    calls = -(-n // args.fifty_batch) * args.nfe  # full batches at the compiled batch size
    out["steady_s"] = calls * out["measure"].get("compiled_s", float("nan"))
    sample = ["sample", str(run), "--seeds", seeds, "--sampler", args.sampler, "--nfe", str(args.nfe), "--batch",
              str(args.fifty_batch), "--device", args.device, "--out", str(work / "fifty.npz"), "--quiet"]
    for label, cache in (("50k auto, warm cache", "cache-fifty"), ("50k auto, cold cache", "cache-fifty-cold")):
        r = {"label": label, "argv": sample, **child(args, ["cli", "--", *sample], work / cache)}
        if r.get("generate_s"):
            r["generate_over_steady"] = r["generate_s"] / out["steady_s"]
        out["runs"].append(r)
        save()


def parse_seed_list(text: str) -> list[int]:
    from fastdiffusion.seeds import parse_seeds

    return parse_seeds(text)


def line_fit(points: list[tuple[int, float]]) -> dict:
    """Seconds = base + per_module x modules through the points (a single point: through the origin)."""
    if len(points) < 2:
        (m, c), = points
        return {"base_s": 0.0, "per_module_s": c / m}
    (m1, c1), (m2, c2) = points[0], points[-1]
    per = (c2 - c1) / (m2 - m1)
    return {"base_s": c1 - per * m1, "per_module_s": per}


def suggest(results: dict) -> dict:
    """The ``CompileCosts`` fields these measurements give (see its docstring)."""
    out: dict = {}
    rows = [r for r in results.get("measure", []) if "error" not in r and len(r["spec"].split(":")) == 4]
    for state in ("cold", "warm"):
        points = sorted((r["modules"], r["compile_s"]) for r in rows if r["cache"] == state)
        if points:
            fit = line_fit(points)
            out[f"{state}_s"], out[f"{state}_per_module_s"] = fit["base_s"], fit["per_module_s"]
    if rows:
        out["speedup"] = min(r["speedup"] for r in rows)
    train = [r for r in results.get("train", []) if "error" not in r]
    if train:
        out["training_speedup"] = min(r["speedup"] for r in train)
    for step in (r for r in train if r["cache"] == "cold"):
        for call in (r for r in rows if r["cache"] == "cold" and r["spec"].split(":")[0] == step["net"]):
            out["training_factor"] = step["compile_s"] / call["compile_s"]
    return out


def medians(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per label of the runs without error: the median process, main and generate seconds and the run count."""
    out: dict[str, dict[str, float]] = {}
    for label in dict.fromkeys(r["label"] for r in rows):
        same = [r for r in rows if r["label"] == label and "error" not in r]
        if same:
            out[label] = {"runs": len(same), **{k: statistics.median(r[k] for r in same)
                                                for k in ("wall_s", "main_s", "generate_s") if k in same[0]}}
    return out


def summary(results: dict) -> str:
    lines = []
    for key in ("cli", "big"):
        for r in results.get(key, []):
            fp = r.get("fast_path") or {}
            decision = fp.get("compile_decision", {}).get("why", "")
            gen = r.get("generate_s")
            lines.append(f"{r['label']:<36} generate {gen if gen is None else f'{gen:7.2f} s'}  "
                         f"main {r.get('main_s', float('nan')):7.2f} s  process {r['wall_s']:7.2f} s  compiled "
                         f"{fp.get('compile')}{'  ' + decision if decision else ''}{'  ERROR' if 'error' in r else ''}")
    for label, m in medians(results.get("cli", [])).items():
        if m["runs"] > 1:
            lines.append(f"median of {m['runs']}: {label:<36} generate {m['generate_s']:7.2f} s  main "
                         f"{m['main_s']:7.2f} s  process {m['wall_s']:7.2f} s")
    for key in ("measure", "train"):
        for r in results.get(key, []):
            if "error" in r:
                lines.append(f"{key} {r.get('spec', r.get('net'))} {r['cache']}: ERROR {r['error']}")
                continue
            lines.append(f"{key} {r.get('spec', r.get('net'))} ({r['modules']} modules) {r['cache']}: eager "
                         f"{r['eager_s'] * 1e3:.2f} ms, compiled {r['compiled_s'] * 1e3:.2f} ms (x{r['speedup']:.2f}), "
                         f"compile {r['compile_s']:.1f} s")
            phases = r.get("compile_phases_s", {})
            if phases:
                lines.append("  " + ", ".join(f"{name} {phases[name]:.1f} s" for name in PHASES if name in phases))
    fifty_out = results.get("fifty", {})
    for r in fifty_out.get("runs", []):
        lines.append(f"{r['label']:<36} generate {r.get('generate_s') or float('nan'):7.2f} s  process "
                     f"{r['wall_s']:7.2f} s  steady state {fifty_out.get('steady_s', float('nan')):7.2f} s  ratio "
                     f"{r.get('generate_over_steady', float('nan')):.3f}{'  ERROR' if 'error' in r else ''}")
    if results.get("suggested_costs"):
        lines.append("suggested CompileCosts: " + ", ".join(f"{k}={v:.4g}" for k, v in
                                                              sorted(results["suggested_costs"].items())))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="result JSON (rewritten after every run)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    p.add_argument("--net", default="ddpmpp-small", help="network of the trained model (cli, big)")
    p.add_argument("--data", default="digits32")
    p.add_argument("--train-steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=64, help="training batch (the model, and the train part)")
    p.add_argument("--seeds", default="0-63")
    p.add_argument("--big-seeds", default="0-4095")
    p.add_argument("--sampler", default="heun")
    p.add_argument("--nfe", type=int, default=35)
    p.add_argument("--prev-src", type=Path, default=os.environ.get("PREV_SRC") or None,
                   help="a previous source tree whose default runs too (default: $PREV_SRC)")
    p.add_argument("--measure", default="ddpmpp-small:64:32:1,ddpmpp-cifar10:1024:32:3",
                   help="networks to measure, NET:BATCH:RESOLUTION:CHANNELS, comma-separated")
    p.add_argument("--train-net", default="ddpmpp-small")
    p.add_argument("--calls", type=int, default=20, help="timed calls (steps) for each median")
    p.add_argument("--work", type=Path, default=None, help="work directory (default: a new temporary one)")
    p.add_argument("--child-timeout", type=float, default=300.0)
    p.add_argument("--repeats", type=int, default=3, help="runs of the small job's eager and automatic modes")
    p.add_argument("--fifty-net", default="ddpmpp-cifar10", help="network of the fifty part (EDM's CIFAR-10, 56M)")
    p.add_argument("--fifty-seeds", default="0-49999")
    p.add_argument("--fifty-batch", type=int, default=1024)
    args = p.parse_args()
    parts = [s for s in args.parts.split(",") if s]
    unknown = set(parts) - set(PARTS)
    if unknown:
        p.error(f"--parts: unknown {', '.join(sorted(unknown))}")
    work = args.work or Path(tempfile.mkdtemp(prefix="first_samples-"))
    from fastdiffusion.bench.provenance import provenance
    from fastdiffusion.checkpoint import atomic_write_json

    results: dict = {**provenance(args.device),
                     "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}

    def save() -> None:
        results["suggested_costs"] = suggest(results)
        results["cli_medians"] = medians(results.get("cli", []))
        atomic_write_json(args.out, results)

    run = work / "run"
    if {"cli", "big"} & set(parts) and not (run / "config.json").is_file():
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "fastdiffusion.cli", "train", "--data", args.data, "--net", args.net,
                        "--steps", str(args.train_steps), "--batch", str(args.batch), "--no-compile", "--device",
                        args.device, "--run-dir", str(run), "--ckpt-every", str(args.train_steps), "--grid-images",
                        "16", "--quiet"], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        results["train_model_s"] = time.perf_counter() - t0

    def sample_runs(tag: str, seeds: str) -> None:
        runs = cli_runs(args, run, work, seeds, tag)
        if tag == "cli" and args.prev_src:
            prev = [f for f in runs[0][1] if f != "--compile"]
            runs += [("previous default, cold cache", prev, work / "cache-prev", {}),
                     ("previous default, warm cache", prev, work / "cache-prev", {})]
        for label, argv, cache, env in runs:
            src = args.prev_src.resolve() if label.startswith("previous") else ROOT
            results.setdefault(tag, []).append({"label": label, "argv": argv, "source": str(src), "env": env,
                                                **child(args, ["cli", "--", *argv], cache, src, env)})
            save()

    if "cli" in parts and args.seeds:  # first what matters most, should the device time run out
        sample_runs("cli", args.seeds)
    if "measure" in parts:
        for spec in args.measure.split(","):
            cache = work / f"cache-measure-{spec.replace(':', '-')}"
            for state in ("cold", "warm"):
                results.setdefault("measure", []).append(
                    {"cache": state, "spec": spec,
                     **child(args, ["measure", spec, str(args.calls), args.device], cache)})
                save()
    if "train" in parts:
        cache = work / "cache-train"
        for state in ("cold", "warm"):
            results.setdefault("train", []).append(
                {"cache": state, **child(args, ["train", args.train_net, args.data, str(args.batch), str(args.calls),
                                                args.device], cache)})
            save()
    if "big" in parts and args.big_seeds:
        sample_runs("big", args.big_seeds)
    if "fifty" in parts:
        fifty(args, work, results, save)
    save()
    print(summary(results))
    print(f"-> {args.out} (work: {work})")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        kind, out, rest = sys.argv[2], Path(sys.argv[3]), sys.argv[4:]
        if kind == "cli":
            worker_cli(out, rest[1:])  # after "--"
        elif kind == "measure":
            worker_measure(out, rest[0], int(rest[1]), rest[2])
        else:
            worker_train(out, rest[0], rest[1], int(rest[2]), int(rest[3]), rest[4])
    else:
        main()
