"""The one-job lock (``exclusive``: names its holder, dies with it) and the waiting lock of short
read-modify-writes (``waiting``: no update lost between processes)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from lockutil import lock_held_elsewhere

from medtransfer.shared.utils.errors import MedTransferError
from medtransfer.shared.utils.locks import exclusive, waiting


def test_exclusive_names_its_holder_and_dies_with_it(tmp_path: Path) -> None:
    lock, target = tmp_path / ".job.lock", tmp_path / "out"
    with lock_held_elsewhere(lock, target) as holder:
        with pytest.raises(MedTransferError) as e:
            with exclusive(lock, target, "already being extracted into by"):
                pass
        msg = str(e.value)
        assert msg.startswith(f"{target}: already being extracted into by pid {holder.pid} on {socket.gethostname()}")
        assert "\n" not in msg
    assert lock.exists()
    with exclusive(lock, target):
        with exclusive(lock, target):  # re-entrant in one process
            pass
        assert lock.exists()
    assert not lock.exists()  # removed on a clean exit


def test_waiting_loses_no_update_between_processes(tmp_path: Path) -> None:
    """Two processes add 40 keys each to one JSON file, re-reading it under the lock each time."""
    f = tmp_path / "index.json"
    code = (
        "import json, os, sys\nfrom pathlib import Path\nfrom medtransfer.shared.utils.locks import waiting\n"
        "f = Path(sys.argv[1])\n"
        "for i in range(40):\n"
        "    with waiting(f.with_name('.index.lock')):\n"
        "        d = json.loads(f.read_text()) if f.exists() else {}\n"
        "        d[f'{sys.argv[2]}{i}'] = i\n"
        "        t = f.with_name(f'.{os.getpid()}.tmp'); t.write_text(json.dumps(d)); os.replace(t, f)\n"
    )
    ps = [subprocess.Popen([sys.executable, "-c", code, str(f), k]) for k in "ab"]
    assert [p.wait(timeout=120) for p in ps] == [0, 0]
    assert len(json.loads(f.read_text())) == 80
    with waiting(tmp_path / ".index.lock"):  # free again
        pass


def test_a_filesystem_without_locks_runs_the_job_unguarded_saying_so(tmp_path: Path, monkeypatch, capsys) -> None:
    """flock on some network / FUSE mounts fails with ENOLCK / EOPNOTSUPP: the job ran with a
    traceback before; now it runs, saying once that it is not guarded.  Other errors are one line."""
    import errno

    import medtransfer.shared.utils.locks as L

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(L.fcntl, "flock", no_locks)
    ran = False
    with exclusive(tmp_path / ".job.lock", tmp_path / "out"):
        ran = True
    assert ran and "has no file locks: not guarded" in capsys.readouterr().err
    with waiting(tmp_path / ".index.lock"):  # the cache index's lock: unguarded too, no traceback
        ran = False
    assert not ran

    def broken(fd: int, op: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(L.fcntl, "flock", broken)
    with pytest.raises(MedTransferError, match=r"out: cannot lock \.job\.lock \(Input/output error\)"):
        with exclusive(tmp_path / ".job.lock", tmp_path / "out"):
            pass
