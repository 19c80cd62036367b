"""What every committed result JSON records: the command, the device, library versions and the git commit."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch


def git_commit() -> str:
    """HEAD (+dirty); on machines the repository travels to without .git, set FASTDIFFUSION_GIT_COMMIT."""
    if os.environ.get("FASTDIFFUSION_GIT_COMMIT"):
        return os.environ["FASTDIFFUSION_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10, cwd=Path(__file__).resolve().parent).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: torch.device | str | None = None) -> str:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def provenance(device: torch.device | str | None = None) -> dict:
    import numpy

    from .. import __version__

    return {
        "command": " ".join(getattr(sys, "orig_argv", sys.argv)),
        "device": device_name(device),
        "versions": {"fastdiffusion": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
                     "python": platform.python_version(), "cuda": torch.version.cuda},
        "git_commit": git_commit(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
