"""One job per output: an exclusive, kernel-held lock file naming its holder.  Torch-free.

``fcntl.flock(LOCK_EX | LOCK_NB)`` on a lock file with ``"<pid> <host>"`` written into it.  The
kernel releases the lock when the process dies (even SIGKILL), so a stale lock file never blocks
a restart; the file is removed on a clean exit.  Re-entrant within one process.  Used by
``score`` (its results file), ``estimate``, ``wsi extract`` (its features folder) and training
(``fit``: its run folder); :func:`waiting` guards short read-modify-writes (the EEG cache index).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medtransfer.shared.utils.errors import MedTransferError

_HELD: dict[str, list[Any]] = {}  # lock file (resolved) -> [open file, depth] held by this process


@contextmanager
def exclusive(lock_file: str | Path, target: str | Path, busy: str = "already being written by") -> Iterator[Path]:
    """Hold the exclusive lock ``lock_file`` (guarding ``target``) for the ``with`` block.

    Args:
        lock_file: the lock file (created; its folder must exist).
        target: what the lock guards, named in the messages.
        busy: the refusal's wording before the holder ("already being written by").

    Raises:
        MedTransferError: another process holds it ("``target``: already being written by pid N on
            HOST (lock ...); wait for that job or stop it"), or it cannot be created.
    """
    lp = Path(lock_file)
    key = os.path.realpath(lp)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield lp
        finally:
            _HELD[key][1] -= 1
        return
    f = _acquire(Path(target), lp, busy)
    if f is None:  # a filesystem without locks: the job runs unguarded (said once on stderr)
        yield lp
        return
    _HELD[key] = [f, 1]
    try:
        yield lp
    finally:
        del _HELD[key]
        try:
            if os.path.exists(lp) and os.stat(lp).st_ino == os.fstat(f.fileno()).st_ino:
                os.unlink(lp)  # still holding the lock: nobody else can be using this inode
        except OSError:
            pass
        f.close()


#: flock errors that mean "this filesystem has no locks" (some network / FUSE mounts), not "busy"
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def _acquire(target: Path, lp: Path, busy: str) -> Any | None:
    for _ in range(20):
        try:
            f = open(lp, "a+", encoding="utf-8")  # noqa: SIM115 - held for the job
        except OSError as e:
            raise MedTransferError(
                f"{target}: cannot create the lock file {lp.name} ({e.strerror or type(e).__name__})"
            ) from None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(f)
            f.close()
            raise MedTransferError(f"{target}: {busy} {holder} (lock {lp}); wait for that job or stop it") from None
        except OSError as e:
            f.close()
            if e.errno not in _NO_LOCKS:
                raise MedTransferError(f"{target}: cannot lock {lp.name} ({e.strerror or type(e).__name__})") from None
            sys.stderr.write(f"{target}: its filesystem has no file locks: not guarded against a second job on it\n")
            return None
        try:  # the previous holder may have removed the file between our open and our lock
            same = os.stat(lp).st_ino == os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            f.close()
            continue
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()} {socket.gethostname()}\n")
        f.flush()
        return f
    raise MedTransferError(f"{target}: could not take the lock {lp} (it keeps being replaced)")


def _holder(f: Any) -> str:
    for _ in range(25):  # the holder writes its pid right after locking: give it a moment
        f.seek(0)
        parts = f.read(200).split()
        if len(parts) >= 2 and parts[0].isdigit():
            return f"pid {parts[0]} on {parts[1]}"
        time.sleep(0.02)
    return "another process"


@contextmanager
def waiting(lock_file: str | Path) -> Iterator[None]:
    """Hold ``lock_file`` exclusively for a short read-modify-write, waiting for another holder
    (e.g. two jobs updating one cache index).  Released by the kernel if the process dies."""
    lp = Path(lock_file)
    with open(lp, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        except OSError as e:
            if e.errno not in _NO_LOCKS:
                raise
            yield  # a filesystem without locks: unguarded, as before there was a lock
            return
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
