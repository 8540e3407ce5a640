"""Hold a job lock from another process, as a second job running on the same output would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def lock_held_elsewhere(lock: Path, target: str | Path = "x") -> Iterator[subprocess.Popen]:
    """Another process holds ``lock`` (``shared.utils.locks.exclusive``) for the ``with`` block, then
    is killed (SIGKILL: the kernel drops its lock, the lock file stays)."""
    code = (
        "import time\nfrom medtransfer.shared.utils.locks import exclusive\n"
        f"with exclusive({str(lock)!r}, {str(target)!r}):\n    print('held', flush=True)\n    time.sleep(600)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "held"
        yield p
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
