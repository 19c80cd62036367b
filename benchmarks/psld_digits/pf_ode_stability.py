"""Where a trained PSLD model's probability-flow ODE goes wrong: its ε error on perturbed training data per time, the
PF-ODE (psld-conj, lam = 0, 200 steps on the quadratic grid) from perturbed training data at a start time t0 back to
t = 0, and whole runs from the prior by deterministic and stochastic samplers. Usage (CPU, about two minutes; the
PSLD demo model: ``fastdiffusion train --preset demo --process psld --run-dir RUN``):
    python benchmarks/psld_digits/pf_ode_stability.py RUN --out benchmarks/psld_digits/pf_ode_stability.json
"""

from __future__ import annotations

import torch
from trained_run import load_trained_run

import fastdiffusion as fd
from fastdiffusion.bench.provenance import provenance
from fastdiffusion.checkpoint import atomic_write_json
from fastdiffusion.processes.psld import split
from fastdiffusion.samplers import make_sigmas, splitting
from fastdiffusion.samplers.counted import CountedModel

TIMES = (1.0, 0.9, 0.8, 0.65, 0.5, 0.3, 0.1)
STARTS = (1.0, 0.8, 0.65, 0.5, 0.2)
FROM_PRIOR = (("psld-conj", 500, {"lam": 0.0}), ("csps-d", 100, {}), ("csps-d", 20, {}), ("psld-conj", 10, {}),
              ("sscs", 100, {}))


def stats(x: torch.Tensor) -> dict:
    return {"abs_max": float(x.abs().max()), "std": float(x.std())}


def main() -> None:
    args, model, run_data, images = load_trained_run(__doc__)
    torch.manual_seed(0)
    proc = model.process
    x0 = images[: args.n]
    n, c = x0.shape[:2]
    out: dict = {"data": run_data, "data_std": float(x0.std()), "eps_error": [], "pf_ode_from_data": [],
                 "from_prior": []}
    counted = CountedModel(model, proc)
    with torch.no_grad():
        for t0 in TIMES + tuple(s for s in STARTS if s not in TIMES):
            t = torch.full((n,), t0, dtype=torch.float64)
            z, target = proc.perturb(x0, t, torch.randn(n, 2 * c, *x0.shape[2:], dtype=torch.float64))
            if t0 in TIMES:
                eps = model(z.float(), torch.tensor(t0, dtype=torch.float64)).double()
                row = {"t": t0}
                for name, e, y in zip(("x", "m"), split(eps), split(target), strict=True):
                    row[f"rms_error_{name}"] = float((e - y).square().mean().sqrt())
                    row[f"gain_{name}"] = float((e * y).sum() / y.square().sum())  # least-squares eps ~ gain target
                out["eps_error"].append(row)
            if t0 in STARTS:
                ts = make_sigmas("quadratic", 200, proc.eval_eps, t0)
                x = split(splitting.psld_conj(counted, z.float(), ts, lam=0.0))[0]
                out["pf_ode_from_data"].append({"t0": t0, **stats(x), "rms_to_x0": float((x.double() - x0)
                                                                                          .square().mean().sqrt())})
        for sampler, nfe, opts in FROM_PRIOR:
            x = fd.generate(model, list(range(args.n)), sampler=sampler, nfe=nfe, progress=False, **opts)
            out["from_prior"].append({"sampler": sampler, "nfe": nfe, "options": opts, **stats(x)})
    for key in ("eps_error", "pf_ode_from_data", "from_prior"):
        for row in out[key]:
            print(key, row)
    atomic_write_json(args.out, {**provenance("cpu"), "model": str(args.model), "process": proc.config(), **out})


if __name__ == "__main__":
    main()
