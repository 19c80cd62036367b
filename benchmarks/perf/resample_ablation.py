"""``bench throughput`` with the box-filter resampling of the U-Nets forced back to depthwise convolutions.

The pooling form is exact (tests/test_nets.py), so it has no switch; this measures what it buys. Same arguments as
``python -m fastdiffusion.bench.throughput``.
"""

from __future__ import annotations

import argparse

from fastdiffusion.bench import throughput
from fastdiffusion.nets import unet

_init = unet.Resample.__init__


def _conv_resample(self: unet.Resample, *args: object, **kwargs: object) -> None:
    _init(self, *args, **kwargs)
    self.box = False


if __name__ == "__main__":
    unet.Resample.__init__ = _conv_resample
    parser = argparse.ArgumentParser(description=__doc__)
    throughput.add_arguments(parser)
    throughput.main(parser.parse_args())
