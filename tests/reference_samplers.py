"""Load k-diffusion's samplers (the field's de-facto reference) without its heavy package ``__init__``.

``k_diffusion/sampling.py`` needs only two helpers of ``k_diffusion.utils`` for the samplers we compare with; the real
``utils`` module imports torchvision, so a two-function stand-in is registered in its place.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import types

import torch


@functools.cache
def load_k_diffusion_sampling() -> types.ModuleType:
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("k-diffusion is not installed (make test installs it)")
    root = list(spec.submodule_search_locations)[0]
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = [root]
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    utils.append_zero = lambda x: torch.cat([x, x.new_zeros([1])])
    sys.modules.setdefault("k_diffusion", pkg)
    sys.modules.setdefault("k_diffusion.utils", utils)
    mod_spec = importlib.util.spec_from_file_location("k_diffusion.sampling", f"{root}/sampling.py")
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module
