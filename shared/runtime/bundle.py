"""ONNX bundles on disk: model files, ``metadata.json``, ``README.md`` and ``checksums.sha256``.

The layout, the typed metadata and the integrity rules are defined once in
:mod:`medtransfer.shared.runtime.schema`.  Loading validates the metadata against that model
(a bad field, a newer schema -> one-line :class:`BundleError`) and, unless ``verify=False``,
checks that the folder holds exactly the files listed in ``checksums.sha256`` with matching
sha256 (metadata and model card included; no unlisted, linked or nested entries).
Predictors read the metadata only through the validated model (:attr:`Bundle.description`,
or its plain-dict copy :attr:`Bundle.meta`).  Torch-free.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from medtransfer.shared.runtime.cache import file_sha256, ort_session
from medtransfer.shared.runtime.schema import (
    CARD,
    CHECKSUMS,
    METADATA,
    OS_FILES,
    BundleMeta,
    FileCheck,
    format_checksums,
    parse_checksums,
    read_metadata_bytes,
)
from medtransfer.shared.utils.envflags import env_off
from medtransfer.shared.utils.errors import BundleError
from medtransfer.shared.utils.hashing import sha256_file, sha256_text

__all__ = ["Bundle", "BundleMeta", "FileCheck", "load_bundle", "METADATA", "CHECKSUMS"]


def _read_regular(path: Path, what: str) -> bytes:
    """Bytes of a regular, non-linked file inside a bundle (BundleError otherwise)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise BundleError(f"{path}: missing ({what})") from None
    if stat.S_ISLNK(st.st_mode):
        raise BundleError(f"{path}: symbolic link inside the bundle; bundle refused")
    if not stat.S_ISREG(st.st_mode):
        raise BundleError(f"{path}: not a regular file; bundle refused")
    return path.read_bytes()


class Bundle:
    """An exported model bundle.

    Args:
        path: the bundle folder.
        verify: check the folder against ``checksums.sha256`` (every file, its sha256, nothing
            unlisted); the metadata is schema-validated either way.
        cached: take an unchanged file's sha256 from this user's digest cache (its identity:
            path, inode, size, mtime, ctime; any write changes it); False re-reads every file
            (``medtransfer verify``: also catches corruption that no write caused).
        threads: intra-op threads for ONNX Runtime sessions (0 = ORT default).

    Raises:
        BundleError: not a bundle, invalid metadata, a newer schema, or a failed integrity check.
    """

    def __init__(self, path: str | Path, verify: bool = True, threads: int = 0, cached: bool = True) -> None:
        self.path = Path(path)
        meta_path = self.path / METADATA
        if not self.path.is_dir() or not (meta_path.exists() or meta_path.is_symlink()):
            raise BundleError(f"{self.path}: not a bundle (no {METADATA})")
        data = _read_regular(meta_path, "bundle metadata")
        self._meta_sha = hashlib.sha256(data).hexdigest()  # what was parsed is what gets verified
        #: the validated metadata (the one typed description, shared with the writer)
        self.description: BundleMeta = read_metadata_bytes(data, str(meta_path))
        #: plain-dict copy of :attr:`description` (JSON key names, app keys included)
        self.meta: dict[str, Any] = self.description.to_dict()
        self.threads = threads
        self._sessions: dict[str, Any] = {}
        self.checks: list[FileCheck] = []
        if verify:
            self.checks = self.verify(cached=cached)

    # -- identity -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.description.name

    @property
    def version(self) -> str:
        return self.description.version

    @property
    def app(self) -> str:
        return self.description.app

    @property
    def task(self) -> str:
        return self.description.task

    @property
    def schema(self) -> str:
        """The schema string of the metadata, e.g. ``medtransfer-bundle/2``."""
        return self.description.schema_id

    @property
    def labels(self) -> list[str]:
        return list(self.description.labels)

    @property
    def preprocessing(self) -> dict[str, Any]:
        return dict(self.meta["preprocessing"])

    @property
    def unreliable(self) -> str:
        """Why every answer of this bundle is unreliable ("" = nothing known), e.g. a run exported
        with ``--force`` below its trivial baseline (``metadata["unreliable"]``)."""
        reason = self.meta.get("unreliable") or ""
        base = self.meta.get("baseline")
        if not reason and isinstance(base, dict) and base.get("beats_baseline") is False:
            # the flag taken out of an edited (and resealed) metadata: the record still says it
            reason = f"its validation {base.get('metric', 'metric')} does not beat the trivial baseline"
        return " ".join(str(reason).split())[:300]

    @cached_property
    def sha256(self) -> str:
        """The bundle's identity: sha256 of its canonical ``checksums.sha256`` (which covers every
        file, metadata and model card included), so a change to any file changes it."""
        data = _read_regular(self.path / CHECKSUMS, "bundle checksums")
        return sha256_text(format_checksums(parse_checksums(data, str(self.path / CHECKSUMS))))

    def provenance(self) -> dict[str, str]:
        """The fields every scored row carries."""
        return {"bundle_name": self.name, "bundle_version": self.version, "bundle_sha256": self.sha256}

    # -- integrity ------------------------------------------------------------------------
    def verify(self, cached: bool = True) -> list[FileCheck]:
        """Check the folder against ``checksums.sha256`` and the metadata's ``files``.

        Args:
            cached: take an unchanged file's sha256 from the digest cache (see :class:`Bundle`).

        Returns:
            One :class:`FileCheck` per file (``OK``), plus ignored OS view files (``ignored``).

        Raises:
            BundleError: naming the first entry that is unlisted, missing, linked, nested or altered.
        """
        where = self.path / CHECKSUMS
        if not (where.exists() or where.is_symlink()):
            raise BundleError(f"{where}: missing; bundle refused (bundles from before schema 2 must be re-exported)")
        listed = parse_checksums(_read_regular(where, "bundle checksums"), str(where))
        files = self.description.files
        for required in (METADATA, CARD, *files):
            if required not in listed:
                raise BundleError(f"{self.path / required}: not covered by {CHECKSUMS}; bundle refused")
        for name in listed:
            if name not in files and name not in (METADATA, CARD):
                raise BundleError(
                    f"{self.path / name}: in {CHECKSUMS} but not one of the bundle's files in "
                    f"{METADATA}; bundle refused"
                )
        ignored: list[FileCheck] = []
        with os.scandir(self.path) as it:
            entries = sorted(it, key=lambda e: e.name)
        present = set()
        for e in entries:
            p = self.path / e.name
            if e.is_symlink():
                raise BundleError(f"{p}: symbolic link inside the bundle; bundle refused")
            if e.name == CHECKSUMS:
                continue
            if e.is_dir(follow_symlinks=False):
                raise BundleError(f"{p}: unexpected folder inside the bundle; bundle refused")
            if not e.is_file(follow_symlinks=False):
                raise BundleError(f"{p}: not a regular file; bundle refused")
            if e.name in OS_FILES:
                ignored.append(FileCheck(e.name, e.stat(follow_symlinks=False).st_size, "", "ignored"))
                continue
            if e.name not in listed:
                raise BundleError(f"{p}: not listed in {CHECKSUMS} (unexpected file in the bundle); bundle refused")
            present.add(e.name)
        checks: list[FileCheck] = []
        for name in sorted(listed):
            p = self.path / name
            if name not in present:
                raise BundleError(f"{p}: listed in {CHECKSUMS} but missing; bundle refused")
            # the per-user digest cache (shared.runtime.cache) answers for an unchanged file without
            # re-reading it; any write to the file changes its ctime, so an edited file is hashed again
            digest = self._meta_sha if name == METADATA else file_sha256(p) if cached else sha256_file(p)
            if digest != listed[name]:
                raise BundleError(f"{p}: sha256 does not match {CHECKSUMS} (file altered or corrupt); bundle refused")
            if name in files and files[name] != digest:
                raise BundleError(f"{p}: sha256 in {METADATA} differs from {CHECKSUMS}; bundle refused")
            checks.append(FileCheck(name, p.stat().st_size, digest, "OK"))
        return checks + ignored

    # -- inference ------------------------------------------------------------------------
    def session(self, name: str = "model.onnx"):
        """An ONNX Runtime session for one model file (kept for this bundle's life).

        CPU sessions reuse this user's saved optimised graph of the same verified model
        (:func:`medtransfer.shared.runtime.cache.ort_session`): full graph optimisation at a
        fraction of its start-up cost.

        Args:
            name: model file inside the bundle.
        """
        if name not in self.description.files:
            raise BundleError(f"{self.path / name}: not a model file of this bundle")
        if name not in self._sessions:
            import onnxruntime as ort

            so = ort.SessionOptions()
            threads = self.threads or int(os.environ.get("MEDTRANSFER_THREADS", "0") or 0)
            if threads:
                so.intra_op_num_threads = threads
                so.inter_op_num_threads = 1
            so.log_severity_level = 3
            # no busy-waiting intra-op threads: they burn the cores that reading/preprocessing (and
            # other score workers) need; measured 1.7x the CPU per EEG case with spinning on
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            digest = next((c.sha256 for c in self.checks if c.name == name and c.status == "OK"), None)
            self._sessions[name] = ort_session(self.path / name, so, _providers(), digest=digest)
        return self._sessions[name]

    def run(self, feeds: dict[str, np.ndarray], name: str = "model.onnx") -> dict[str, np.ndarray]:
        """Run one model file; returns output name -> array."""
        sess = self.session(name)
        outs = sess.run(None, feeds)
        return {o.name: v for o, v in zip(sess.get_outputs(), outs)}


def _providers() -> list[str]:
    import onnxruntime as ort

    avail = ort.get_available_providers()
    want = os.environ.get("MEDTRANSFER_ORT_PROVIDERS")
    if want:
        return [p for p in want.split(",") if p in avail] or ["CPUExecutionProvider"]
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail]


_ARENA_LOCK = threading.Lock()
_ARENA: list[bool] = []  # [registered?] once the first session asked


def share_cpu_arena(so: Any) -> bool:
    """Let a session allocate CPU memory from one arena shared by every session that asks.

    Each ONNX Runtime session otherwise keeps its own arena at its own peak, so a process that runs
    several graphs in turn (videoseg: image encoder, memory attention, memory encoder, decoder) holds
    the sum of their peaks; with one arena it holds about the largest.  Measured at SAM2.1 hiera-tiny
    1024 px, 8 frames: peak RSS 2278 -> 1332 MiB, same speed, identical masks.  The arena is
    registered with ONNX Runtime once per process (``create_and_register_allocator``); where that
    fails, or with ``MEDTRANSFER_ORT_SHARED_ARENA=0``, the session keeps its own arena.  Numerics do
    not depend on the allocator.

    Args:
        so: the ``onnxruntime.SessionOptions`` of a CPU session about to be created.

    Returns:
        True when the session will use the shared arena.
    """
    import onnxruntime as ort

    if env_off("MEDTRANSFER_ORT_SHARED_ARENA"):
        return False
    with _ARENA_LOCK:
        if not _ARENA:
            try:
                info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
                ort.create_and_register_allocator(info, None)
                _ARENA.append(True)
            except Exception:  # noqa: BLE001 - e.g. an older onnxruntime: each session keeps its own
                _ARENA.append(False)
        if not _ARENA[0]:
            return False
    so.add_session_config_entry("session.use_env_allocators", "1")
    return True


def load_bundle(path: str | Path, verify: bool = True, threads: int = 0, cached: bool = True) -> Bundle:
    """Open and verify a bundle folder (see :class:`Bundle`)."""
    return Bundle(path, verify=verify, threads=threads, cached=cached)
