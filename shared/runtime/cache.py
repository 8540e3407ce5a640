"""Per-user runtime cache: verified file digests and optimised ONNX Runtime graphs.  Torch-free.

Two things make a bundle's cold start slow, and both give the same answer every time for the
same bytes:

- **Digests** (:func:`file_sha256`): sha256 of a file, remembered under the file's identity
  ``(realpath, st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)``.  Any write to a file changes
  its ctime (which no user call can set back), so an edited file misses the cache and is hashed
  again: a bundle altered in place is still refused.  Files whose mtime/ctime are younger than
  :data:`RACY_SECONDS` are hashed but not remembered (a write within the filesystem's timestamp
  tick would not change the key; git's "racily clean" rule).
- **Sessions** (:func:`ort_session`): a CPU session's optimised graph
  (``SessionOptions.optimized_model_filepath``), keyed by the source model's sha256, the
  onnxruntime version, the providers, the optimisation level and this CPU (the graph may hold
  layout choices for this CPU), is saved once and later loaded with graph optimisation off.  Its
  weights go to a file of their own that ONNX Runtime memory-maps (no parsing at start-up; score
  workers share the pages).  Both files are checked against the sha256 recorded when they were
  written (through the digest cache, so an unchanged entry is not re-read).

The cache lives in ``$MEDTRANSFER_CACHE_DIR``, else the platform's per-user cache folder
(``$XDG_CACHE_HOME/medtransfer`` or ``~/.cache/medtransfer``, ``~/Library/Caches/medtransfer``,
``%LOCALAPPDATA%\\medtransfer\\Cache``); ``MEDTRANSFER_CACHE=off`` turns it off.  A missing,
unwritable, foreign-owned, group/world-writable or corrupt cache only means recomputing: no
cache problem ever fails a load.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any

from medtransfer.shared.utils.envflags import env_off, env_on
from medtransfer.shared.utils.hashing import sha256_file

__all__ = ["cache_dir", "file_sha256", "ort_session", "RACY_SECONDS", "MIN_CACHED_BYTES"]

#: format version of the entries (bump to ignore every older entry)
FORMAT = 1
#: files changed less than this many seconds ago are hashed but not remembered
RACY_SECONDS = 2.0
#: smaller files are simply hashed (cheaper than a cache entry)
MIN_CACHED_BYTES = 1 << 16
#: digest entries kept before the oldest half is dropped
MAX_DIGEST_ENTRIES = 4096
#: optimised graphs: at most this many bytes in all (oldest first out) ...
MAX_SESSION_BYTES = 1 << 30
#: ... and at most this many files
MAX_SESSION_FILES = 16


def cache_dir(create: bool = True) -> Path | None:
    """The per-user cache folder, or None when caching is off or the folder is unusable.

    Args:
        create: create the folder (mode 0700) when missing.

    Returns:
        A folder this user owns and nobody else can write, or None.
    """
    if env_off("MEDTRANSFER_CACHE"):
        return None
    env = os.environ.get("MEDTRANSFER_CACHE_DIR")
    if env:
        root = Path(env).expanduser()
    elif sys.platform == "win32":
        root = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local") / "medtransfer" / "Cache"
    elif sys.platform == "darwin":
        root = Path.home() / "Library" / "Caches" / "medtransfer"
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "medtransfer"
    try:
        if create:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.stat(root)
    except (OSError, RuntimeError):  # RuntimeError: no home folder
        return None
    if not stat.S_ISDIR(st.st_mode):
        return None
    if hasattr(os, "getuid") and (st.st_uid != os.getuid() or st.st_mode & 0o022):
        return None  # someone else could plant entries: do not trust it
    return root


# ------------------------------------------------------------------------------------------ digests
def _identity(path: Path) -> tuple[list[Any], os.stat_result] | None:
    """The cache key of a regular file (None when it is not one)."""
    real = os.path.realpath(path)
    st = os.stat(real)
    if not stat.S_ISREG(st.st_mode):
        return None
    return [real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns], st


def _entry(folder: Path, key: Any) -> Path:
    name = hashlib.sha256(json.dumps(key, separators=(",", ":")).encode()).hexdigest()
    return folder / name


def _read_entry(path: Path, key: Any) -> dict[str, Any] | None:
    """A stored entry whose key matches (None when missing, foreign or corrupt)."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("v") != FORMAT or data.get("key") != key:
        return None
    return data


def _is_digest(x: Any) -> bool:
    return isinstance(x, str) and len(x) == 64 and all(c in "0123456789abcdef" for c in x)


def _write_atomic(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` through a temp file + rename; False (nothing left) on any error."""
    import tempfile

    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    except OSError:
        return False
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return True
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return False


def _prune(folder: Path, keep: int) -> None:
    """Drop the oldest half of ``folder``'s entries when it holds more than ``keep``."""
    try:
        entries = [e for e in os.scandir(folder) if e.is_file(follow_symlinks=False)]
        if len(entries) <= keep:
            return
        entries.sort(key=lambda e: e.stat(follow_symlinks=False).st_mtime)
        for e in entries[: len(entries) - keep // 2]:
            os.unlink(e.path)
    except OSError:
        pass


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, remembered per user under the file's identity (see the module notes).

    Args:
        path: the file.

    Returns:
        64-character hex digest (always of the file's current bytes: an edited file is re-hashed).

    Raises:
        OSError: the file cannot be read.
    """
    path = Path(path)
    try:
        ident = _identity(path)
    except OSError:
        ident = None
    folder = cache_dir() if ident and ident[1].st_size >= MIN_CACHED_BYTES else None
    if ident is None or folder is None:
        return sha256_file(path)
    key, before = ident
    where = _entry(folder / "sha256", key)
    hit = _read_entry(where, key)
    if hit and _is_digest(hit.get("sha256")):
        return str(hit["sha256"])
    digest = sha256_file(key[0])
    try:
        after = _identity(path)
    except OSError:
        return digest
    newest = max(before.st_mtime_ns, before.st_ctime_ns) / 1e9
    if after is not None and after[0] == key and time.time() - newest >= RACY_SECONDS:
        if _write_atomic(where, json.dumps({"v": FORMAT, "key": key, "sha256": digest}).encode()):
            _prune(folder / "sha256", MAX_DIGEST_ENTRIES)
    return digest


def _remember(folder: Path, path: Path, digest: str) -> None:
    """Record the digest of a file this module has just written and will not write again (the
    racy-window rule guards against other writers; there are none for these files)."""
    try:
        ident = _identity(path)
    except OSError:
        return
    if ident is not None and ident[1].st_size >= MIN_CACHED_BYTES:
        _write_atomic(
            _entry(folder / "sha256", ident[0]), json.dumps({"v": FORMAT, "key": ident[0], "sha256": digest}).encode()
        )


# ------------------------------------------------------------------------------------------ sessions
def _cpu_id() -> str:
    """What the optimised graph may depend on about this machine (CPU model and feature flags)."""
    import platform

    parts = [platform.machine(), sys.platform]
    try:
        with open("/proc/cpuinfo", "rb") as f:
            info = f.read(1 << 16).decode("utf-8", "replace")
        for line in info.splitlines():
            k = line.split(":", 1)[0].strip()
            if k in ("model name", "flags", "Features", "CPU part", "vendor_id") and line not in parts:
                parts.append(line)
    except OSError:
        pass
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _prune_sessions(folder: Path) -> None:
    """Keep the newest saved graphs within :data:`MAX_SESSION_FILES` / :data:`MAX_SESSION_BYTES`;
    drop weights no entry names and stale temp files (older than 10 minutes)."""
    try:
        cards = sorted(
            (e for e in os.scandir(folder) if e.name.endswith(".json") and e.is_file(follow_symlinks=False)),
            key=lambda e: e.stat(follow_symlinks=False).st_mtime,
            reverse=True,  # newest first
        )
        total, named = 0, set()
        for i, e in enumerate(cards):
            stem = e.path[: -len(".json")]
            try:
                weights = json.loads(Path(e.path).read_bytes()).get("weights") or ""
            except (OSError, ValueError, AttributeError):
                weights = ""
            parts = [stem + ".onnx", e.path] + ([os.path.join(folder, weights)] if _plain(weights) else [])
            total += sum(os.path.getsize(p) for p in parts if os.path.isfile(p))
            if i >= MAX_SESSION_FILES or total > MAX_SESSION_BYTES:
                for p in parts:
                    _unlink(Path(p))
            else:
                named.add(weights)
        now = time.time()
        for e in os.scandir(folder):
            stale = now - e.stat(follow_symlinks=False).st_mtime > 600
            if stale and (e.name.startswith(".tmp-") or (e.name.endswith(".weights") and e.name not in named)):
                _unlink(Path(e.path))
    except OSError:
        pass


def _plain(name: Any) -> bool:
    return isinstance(name, str) and bool(name) and os.path.basename(name) == name and not name.startswith(".")


def _saved_ok(info: dict[str, Any] | None, saved: Path, folder: Path) -> bool:
    """The saved graph and its weights file are the bytes written when the entry was made."""
    if not info or not _is_digest(info.get("sha256")) or not saved.is_file():
        return False
    weights = info.get("weights")
    if weights is not None:
        if not _plain(weights) or not _is_digest(info.get("weights_sha256")) or not (folder / weights).is_file():
            return False
        if file_sha256(folder / weights) != info["weights_sha256"]:
            return False
    return file_sha256(saved) == info["sha256"]


def graph_cache_enabled() -> bool:
    """Whether saved optimised graphs are used: opt-in (``MEDTRANSFER_ORT_GRAPH_CACHE=on``).

    Measured on 2 cores (EEG demo bundle, 120 predictions, alternating runs): sessions loaded from
    the saved graph started ~0.2 s sooner but predicted ~20 % slower per case than a freshly optimised
    session, so batch jobs (``score``) would lose more than a single ``predict`` gains.
    """
    return env_on("MEDTRANSFER_ORT_GRAPH_CACHE")


def ort_session(
    model: str | Path,
    options: Any = None,
    providers: list[str] | None = None,
    digest: str | None = None,
    cache: bool = True,
) -> Any:
    """An ONNX Runtime session for ``model``, reusing this user's saved optimised graph when there is one.

    The saved graph keeps its weights in a separate file that ONNX Runtime memory-maps, so a
    cached session starts without parsing the weights (and processes share the pages).  Only
    CPU-only sessions at an optimisation level above ``ORT_DISABLE_ALL`` are cached (other
    providers may put device-specific nodes in the graph); anything else, and any cache problem,
    gives the plain session.

    Args:
        model: the ``.onnx`` file (its sha256 must be what the caller trusts).
        options: ``onnxruntime.SessionOptions`` (changed here: the optimised-graph path and, for
            a cached graph, the optimisation level); default: ORT's defaults, quiet logging, no spinning.
        providers: execution providers (default ``["CPUExecutionProvider"]``).
        digest: the model's sha256 when the caller already verified it (else :func:`file_sha256`).
        cache: False for the plain session.

    Returns:
        ``onnxruntime.InferenceSession``.
    """
    import onnxruntime as ort

    if options is None:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = list(providers or ["CPUExecutionProvider"])
    level = options.graph_optimization_level
    folder = cache_dir() if cache and graph_cache_enabled() else None
    if folder is None or providers != ["CPUExecutionProvider"] or level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL:
        return ort.InferenceSession(str(model), sess_options=options, providers=providers)
    try:
        digest = digest or file_sha256(model)
        key = [digest, ort.__version__, providers, str(level), _cpu_id()]
        sess_dir = folder / "ort"
        stem = _entry(sess_dir, key)
        saved, card = stem.with_suffix(".onnx"), stem.with_suffix(".json")
        if _saved_ok(_read_entry(card, key), saved, sess_dir):
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            try:
                return ort.InferenceSession(str(saved), sess_options=options, providers=providers)
            except Exception:  # noqa: BLE001 - a bad saved graph: rebuild it below
                options.graph_optimization_level = level
        sess_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tag = f"{os.getpid()}-{os.urandom(6).hex()}"  # never an existing file: live sessions may map one
        tmp = sess_dir / f".tmp-{tag}-{stem.name[:16]}.onnx"
        weights = f"{stem.name[:32]}-{tag}.weights"  # unique per write: the saved graph names it
    except (OSError, ValueError):
        return ort.InferenceSession(str(model), sess_options=options, providers=providers)
    options.optimized_model_filepath = str(tmp)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", weights)
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    try:
        sess = ort.InferenceSession(str(model), sess_options=options, providers=providers)
    except Exception:  # noqa: BLE001 - saving the graph failed: the plain session decides
        _unlink(tmp)
        _unlink(sess_dir / weights)
        options.optimized_model_filepath = ""
        return ort.InferenceSession(str(model), sess_options=options, providers=providers)
    try:
        entry: dict[str, Any] = {"v": FORMAT, "key": key, "sha256": sha256_file(tmp)}
        if (sess_dir / weights).is_file():
            entry.update(weights=weights, weights_sha256=sha256_file(sess_dir / weights))
            if os.name == "posix":
                os.chmod(sess_dir / weights, 0o400)  # mapped by live sessions: nobody writes it again
            _remember(folder, sess_dir / weights, entry["weights_sha256"])
        old = _read_entry(card, key) or {}
        os.replace(tmp, saved)
        _remember(folder, saved, entry["sha256"])
        _write_atomic(card, json.dumps(entry).encode())
        if _plain(old.get("weights")) and old["weights"] != weights:
            _unlink(sess_dir / old["weights"])  # the replaced entry's weights
        _prune_sessions(sess_dir)
    except OSError:
        _unlink(sess_dir / weights)
    _unlink(tmp)
    return sess


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
