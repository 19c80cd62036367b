"""One training per run directory: an exclusive ``flock`` on ``run_dir/.lock``.

The kernel drops the lock when its process dies, even by SIGKILL, so a killed run never leaves it stuck. A forked child
(a DataLoader worker) closes its copy of the descriptor at once: otherwise the lock would outlive the training process
until its last worker noticed and exited.
"""

from __future__ import annotations

import fcntl
import os
import weakref
from functools import partial
from pathlib import Path

from ..errors import UserError


def _close_in_child(ref: weakref.ref) -> None:
    lock = ref()
    if lock is not None and lock.fd >= 0:
        os.close(lock.fd)
        lock.fd = -1


class RunLock:
    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            raise UserError(f"{run_dir} is in use by another training (pid {holder}): wait for it to finish "
                            f"or choose another --run-dir") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        os.register_at_fork(after_in_child=partial(_close_in_child, weakref.ref(self)))

    def release(self) -> None:
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1
