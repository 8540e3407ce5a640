"""Atomic bundle output: write into a hidden temp folder beside the target, then rename onto it.

Every exporter (the core ``export`` command and each app's ``export_run``) writes through
:func:`staged_output`, so ``--out`` may be relative, absolute or an existing folder and a failed
export (parity failure, exception, Ctrl-C) leaves nothing behind: neither a half-written bundle
nor the parent folders it created.  Torch-free.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from medtransfer.shared.runtime.schema import METADATA
from medtransfer.shared.utils.errors import ConfigError

_TMP = ".tmp-"
_OLD = ".old-"


def is_bundle_dir(path: Path) -> bool:
    """True for a folder that holds a ``metadata.json`` file (a bundle, valid or not)."""
    meta = path / METADATA
    return path.is_dir() and meta.is_file() and not meta.is_symlink()


def check_output(out: str | Path, overwrite: bool = False) -> Path:
    """Refuse an output folder an export may not write; returns it as an absolute path.

    Allowed: a path that does not exist, an empty folder, or an existing bundle when
    ``overwrite`` is set (it is replaced as a whole at the end of the export).

    Args:
        out: the bundle folder to write.
        overwrite: replace an existing bundle.

    Returns:
        ``out`` made absolute (not resolved: a link is refused, not followed).

    Raises:
        ConfigError: ``out`` is a file or a link, a non-empty folder that is not a bundle, or an
            existing bundle without ``overwrite``.
    """
    out = Path(os.path.abspath(out))
    if out.is_symlink():
        raise ConfigError(f"{out}: is a symbolic link; give the real folder as --out")
    if not out.exists():
        return out
    if not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder; --out must be a new or empty folder or a bundle")
    if not any(out.iterdir()):
        return out
    if not is_bundle_dir(out):
        raise ConfigError(f"{out}: folder is not empty and not a bundle; refusing to write into it")
    if not overwrite:
        raise ConfigError(f"{out}: a bundle already exists there; pass --overwrite to replace it")
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _sweep_stale(parent: Path, name: str) -> None:
    """Remove temp/old folders left by a killed export of ``name`` (their process is gone)."""
    for tag in (_TMP, _OLD):
        for p in parent.glob(f".{name}{tag}*"):
            pid = p.name.rsplit("-", 1)[-1]
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)) and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)


@contextmanager
def staged_output(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Stage a bundle in ``<out parent>/.<name>.tmp-<pid>`` and rename it onto ``out`` on success.

    Use::

        with staged_output(out_dir, overwrite=True) as tmp:
            export_onnx(model, ..., tmp / "model.onnx", ...)
            write_bundle(tmp, ...)
        # out_dir now holds the finished bundle

    Args:
        out: the bundle folder to produce (relative, absolute, existing empty folder, or an
            existing bundle when ``overwrite``).
        overwrite: replace an existing bundle.

    Yields:
        The (absolute, empty) staging folder to write the bundle into.

    Raises:
        ConfigError: see :func:`check_output` (checked before and again just before the rename).
    """
    out = check_output(out, overwrite)
    parent = out.parent
    created: list[Path] = []
    p = parent
    while not p.exists():
        created.append(p)
        p = p.parent
    parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale(parent, out.name)
    tmp = parent / f".{out.name}{_TMP}{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        check_output(out, overwrite)  # nothing else appeared there meanwhile
        _commit(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for d in created:  # parents this export created, innermost first, if still empty
            try:
                d.rmdir()
            except OSError:
                break
        raise


def _commit(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` onto ``out`` (an absent path, an empty folder or a bundle to replace)."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        os.rename(tmp, out)
        return
    old = out.parent / f".{out.name}{_OLD}{os.getpid()}"
    if old.exists():
        shutil.rmtree(old)
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
