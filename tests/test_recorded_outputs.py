"""The refactor guard: every sampler on exact-score mixtures and on tiny trained models, four training steps of each
process family and a DSNO student reproduce, bit for bit, the outputs recorded before the architecture refactor
(``tests/recorded_outputs.py`` wrote ``tests/data/recorded.safetensors``). The 12 dpmpp-3m and unipc outputs were
re-recorded when the third-order guard (``multistep.stable_order``) changed them on purpose, and the 6 lambda-ddim
outputs when its default became lam = 0 (session 7); nothing else was. Session 8 recorded the whole file again, code
unchanged, on torch 2.13.0+cpu (the earlier file was torch 2.14.1's; every sample within 2.4e-4 of it).

Bit equality holds for the CPU kernels the recording ran on (its torch version and CPU capability are in the file's
metadata: torch 2.13.0+cpu, the build `make test` installs on a machine without a GPU); elsewhere float32 kernels may
round differently, so there the comparison allows 1e-5 relative, 1e-3 absolute for the trained networks' samples
(their rounding grows over the steps: up to 2.4e-4 between torch 2.13.0+cpu and 2.14.1), and leaves out the weight
digests.
"""

import pytest
import torch
from recorded_outputs import FILE, compute
from safetensors import safe_open
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def recorded_and_now():
    with safe_open(str(FILE), "pt") as f:
        meta = f.metadata()
    same_kernels = meta == {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    return load_file(str(FILE)), compute(), same_kernels


def test_same_keys(recorded_and_now):
    recorded, now, _ = recorded_and_now
    assert sorted(now) == sorted(recorded)


def test_outputs_unchanged(recorded_and_now):
    recorded, now, same_kernels = recorded_and_now
    differ = []
    for key, want in recorded.items():
        got = now[key].detach()
        if same_kernels:
            ok = got.dtype == want.dtype and torch.equal(got, want)
        elif "/weights/" in key:  # sha256 digests: only comparable bit for bit
            continue
        else:
            ok = torch.allclose(got, want, rtol=1e-5, atol=1e-3 if key.startswith("trained/") else 1e-6)
        if not ok:
            differ.append(key)
    assert not differ, f"{len(differ)} outputs changed, e.g. {differ[:5]}"
