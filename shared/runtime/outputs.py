"""Where per-input outputs go: derived from the input's path relative to the input root.

Two inputs never share an output folder: ``a/s1.svs`` and ``b/s1.tif`` under one root map to
``OUT/a/s1`` and ``OUT/b/s1``; ``pt.v1.mha`` and ``pt.v2.mha`` to ``OUT/pt.v1`` and ``OUT/pt.v2``.
When two inputs would still map to one key (``s1.svs`` and ``s1.tif`` in one folder) the caller
gets a one-line error naming both, before any work.  Nothing is ever written beside the inputs
unless the user names that folder as the output.  Torch-free.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence

from medtransfer.shared.utils.errors import InputError, MedTransferError


def input_root(paths: Sequence[str | Path]) -> Path:
    """The deepest folder that holds every input (their common parent, resolved)."""
    if not paths:
        return Path.cwd()
    parents = [os.path.dirname(os.path.abspath(p)) for p in paths]  # symlinked inputs keep their own folder
    return Path(os.path.commonpath(parents))


def output_key(path: str | Path, root: str | Path | None = None) -> str:
    """The output key of one input: its path relative to ``root``, without the last suffix, posix.

    Args:
        path: the input file (or frame folder).
        root: the input root (default: the input's own folder, i.e. the key is its stem).

    Returns:
        e.g. ``"a/s1"`` for ``ROOT/a/s1.svs``.

    Raises:
        InputError: the input is not inside ``root``.
    """
    # as the user spelled them (absolute, not symlink-resolved): a symlinked input is keyed by its link
    p = Path(os.path.abspath(path))
    base = Path(os.path.abspath(root)) if root is not None else p.parent
    try:
        rel = p.relative_to(base)
    except ValueError:
        try:
            rel = Path(path).resolve().relative_to(base.resolve())
        except ValueError:
            raise InputError(path, f"is not inside the input root {base}") from None
    parts = list(PurePosixPath(rel.as_posix()).parts)
    if not parts or any(x in ("", ".", "..") for x in parts):
        raise InputError(path, "cannot derive an output name from this path")
    last = parts[-1]
    if p.is_file() and "." in last.strip("."):
        last = last[: last.rfind(".")]
    parts[-1] = last
    return "/".join(parts)


def unique_keys(paths: Iterable[str | Path], root: str | Path | None = None) -> dict[str, Path]:
    """Output key -> input for many inputs; refuses a clash with one line naming both inputs.

    Args:
        paths: the inputs.
        root: the input root (default: their common parent).

    Raises:
        MedTransferError: two inputs map to one output key.
    """
    items = [Path(p) for p in paths]
    base = Path(root) if root is not None else input_root(items)
    out: dict[str, Path] = {}
    for p in items:
        k = output_key(p, base)
        if k in out and out[k].resolve() != p.resolve():
            raise MedTransferError(
                f"{out[k]} and {p} would write the same output '{k}'; rename one or score them separately"
            )
        out[k] = p
    return out


def output_dir(out_root: str | Path, path: str | Path, root: str | Path | None = None) -> Path:
    """``out_root/<output key>`` for one input (not created)."""
    return Path(out_root) / output_key(path, root)


@contextmanager
def report_folder(
    out: str | Path, names: Sequence[str], kind: str, inputs: Iterable[str | Path] = ()
) -> Iterator[Path]:
    """Write a report (a fixed set of file ``names``) into the folder ``out`` as one unit.

    ``out`` may hold other files; only the report's ``names`` are replaced.  Refused before any work:
    ``out`` inside a bundle (an unlisted file makes the bundle refused), or a report file that is
    one of ``inputs`` (the manifest, a case).  Under the lock ``out/.<kind>.lock`` (a second job on
    ``out`` is refused) the caller writes into the yielded staging folder; when the block ends
    without error each staged file replaces its name in ``out`` and the report's other names, left
    by an earlier report, are removed; when it fails ``out`` keeps the earlier report untouched.

    Args:
        out: the report folder (created).
        names: every file name the report may write.
        kind: the job, in the lock's name and the messages (``audit``).
        inputs: files the job reads.

    Raises:
        MedTransferError: one line naming ``out`` and the collision, or the job holding it.
    """
    from medtransfer.shared.runtime.score import bundle_above
    from medtransfer.shared.utils.locks import exclusive

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MedTransferError(f"{out}: -o is a file; the {kind} writes a folder")
    inside = bundle_above(out)
    if inside is not None:
        raise MedTransferError(f"{out}: -o is inside the bundle {inside} (choose a folder outside it)")
    ins = {os.path.realpath(p) for p in inputs}
    for n in names:
        if os.path.realpath(out / n) in ins:
            raise MedTransferError(f"{out}: the {kind}'s {n} would overwrite an input of the job (choose another -o)")
    out.mkdir(parents=True, exist_ok=True)
    with exclusive(out / f".{kind}.lock", out, f"already being written by another {kind},"):
        stage = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=out))
        try:
            yield stage
            for n in names:
                if (stage / n).is_file():
                    os.replace(stage / n, out / n)
                elif (out / n).is_file():
                    (out / n).unlink()  # an earlier report's file this one does not have (a stale plot)
        finally:
            shutil.rmtree(stage, ignore_errors=True)


@contextmanager
def artefact_lock(out_dir: str | Path | None) -> Iterator[None]:
    """Hold ``out_dir/.artefacts.lock`` while a job writes per-input artefacts there (masks, plots):
    a second job writing into the same folder at the same time is refused in one line (two jobs'
    ``case1/masks.npz`` overwrote each other, and a results file pointed at the other job's masks).
    Nothing happens without ``out_dir``.

    Raises:
        MedTransferError: another job holds the folder.
    """
    if not out_dir:
        yield
        return
    from medtransfer.shared.utils.locks import exclusive

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with exclusive(Path(out_dir) / ".artefacts.lock", out_dir, "already being written by another job,"):
        yield
