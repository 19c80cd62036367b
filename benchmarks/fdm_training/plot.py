"""Plot FD-digits vs training images for every ``*.json`` written by pilot.py in this folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(folder: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for path in sorted(folder.glob("*.json")):
        curve = json.loads(path.read_text())["curve"]
        style = "--" if path.stem.startswith("fdm-") else "-"
        ax.plot([c["kimg"] for c in curve], [c["fd"] for c in curve], style, marker="o", ms=3, label=path.stem)
    ax.set_yscale("log")
    ax.set_xlabel("training images (k)")
    ax.set_ylabel("FD-digits vs test split (n=1000, heun 35 NFE, EMA)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(folder / "fd_vs_kimg.png", dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
