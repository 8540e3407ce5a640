"""One way to read and write a training run folder.

A run folder holds ``run.json`` (what the run is: app, task, seed, and the sha256 of each
checkpoint), ``config.yaml`` (the resolved config), ``checkpoints/{best,last}.pt``, metrics and
summary files.  Everything that opens ``run.json`` or a checkpoint goes through :class:`RunDir`:

- checkpoints hold only tensors and plain data and are read with ``torch.load(weights_only=True)``,
  so a planted pickle in a shared run folder never runs (a refused file gives one line naming it);
- loading verifies the checkpoint's sha256 recorded in ``run.json``;
- ``run.json`` is replaced atomically and read through one validated accessor.

Importing this module does not import torch (only the checkpoint functions do).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

from medtransfer.shared.utils.errors import InputError, MedTransferError
from medtransfer.shared.utils.hashing import sha256_file

RUN_JSON = "run.json"
CONFIG = "config.yaml"
CHECKPOINTS = ("best", "last")


class CheckpointError(MedTransferError):
    """A checkpoint that cannot be trusted or read (one line naming the file)."""


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def plain(obj: Any) -> Any:
    """Turn a checkpoint payload into tensors and plain Python data only (what ``weights_only`` reads).

    numpy scalars become Python numbers, numpy arrays become tensors, tuples stay tuples, Paths
    become strings; anything else that is not plain data raises ``TypeError`` (naming its type)
    instead of being pickled.
    """
    import numpy as np
    import torch

    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj
    if torch.is_tensor(obj):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Size):
        return tuple(obj)
    if isinstance(obj, Mapping):
        return {
            (k if isinstance(k, (str, int, float, bool)) or k is None else str(k)): plain(v) for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj) if type(obj) in (list, tuple) else [plain(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return [plain(v) for v in sorted(obj, key=str)]
    if isinstance(obj, torch.dtype):
        return str(obj)
    raise TypeError(f"checkpoint payload holds a {type(obj).__name__}; only tensors and plain data are saved")


def load_checkpoint_file(
    path: str | Path, map_location: Any = "cpu", sha256: str | set[str] | None = None
) -> dict[str, Any]:
    """Read a checkpoint safely: ``weights_only=True``, optional sha256 check, one-line errors.

    Args:
        path: the ``.pt`` file.
        map_location: torch map_location.
        sha256: expected digest (or set of accepted digests); None = do not check.

    Returns:
        The checkpoint dict.

    Raises:
        CheckpointError: missing, altered (sha256), not a checkpoint, or holding code (refused).
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if sha256:
        want = {sha256} if isinstance(sha256, str) else set(sha256)
        if sha256_file(path) not in want:
            raise CheckpointError(f"{path}: sha256 does not match run.json (file altered or replaced); refused")
    try:
        st = torch.load(str(path), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "global" not in str(e).lower():  # no code object named: not a pickle of code (a CSV, garbage)
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt)") from None
        raise CheckpointError(
            f"{path}: refused: holds objects other than tensors and plain data "
            "(a checkpoint from an untrusted source, or from an old medtransfer)"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt)") from None
    if not isinstance(st, dict):
        raise CheckpointError(f"{path}: not a medtransfer checkpoint (expected a dict)")
    return st


def model_builder(fn: Any) -> Any:
    """Mark a function (or class) as a model builder a checkpoint's model spec may name.

    Only marked builders are called by :func:`build_from_spec`: a run folder cannot make us call
    any other function, even inside medtransfer.
    """
    fn.__medtransfer_model_builder__ = True
    return fn


def model_spec(registry: str | None = None, builder: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """What a checkpoint records to rebuild its model (braindecode's ``get_config`` / timm's idea).

    Args:
        registry: a name in the shared backbone registry (``create_model(registry, pretrained=False, **kwargs)``).
        builder: or a ``"module:function"`` returning the model (or ``(model, ...)``).
        **kwargs: the builder's arguments (plain data only).

    Returns:
        ``{"registry" | "builder": ..., "kwargs": {...}}``.
    """
    if (registry is None) == (builder is None):
        raise ValueError("model_spec needs exactly one of registry= or builder=")
    return {"registry": registry, "kwargs": kwargs} if registry else {"builder": builder, "kwargs": kwargs}


def build_from_spec(spec: Mapping[str, Any]) -> Any:
    """Build the (untrained) model a :func:`model_spec` describes."""
    kwargs = dict(spec.get("kwargs") or {})
    if spec.get("registry"):
        from medtransfer.shared.registry import create_model

        return create_model(str(spec["registry"]), pretrained=False, **kwargs)
    from medtransfer.shared.plugins import load_object

    ref = str(spec.get("builder") or "")
    if not ref.startswith("medtransfer.") or ":" not in ref:  # a run folder may only name our own builders
        raise CheckpointError(f"model spec names builder {ref[:80]!r}, which is not a medtransfer builder; refused")
    try:
        fn = load_object(ref)
    except (ImportError, AttributeError):
        raise CheckpointError(f"model spec names builder {ref[:80]!r}, which does not exist") from None
    if not getattr(fn, "__medtransfer_model_builder__", False):
        raise CheckpointError(f"model spec names {ref[:80]!r}, which is not a medtransfer builder; refused")
    out = fn(**kwargs)
    return out[0] if isinstance(out, tuple) else out


class RunDir:
    """A training run folder.

    Args:
        path: the folder.
        must_exist: raise unless ``run.json`` is there (reading an existing run).
    """

    def __init__(self, path: str | Path, must_exist: bool = True) -> None:
        self.path = Path(path)
        if must_exist and not (self.path / RUN_JSON).is_file():
            if not self.path.exists():
                raise InputError(self.path, "run folder not found")
            raise InputError(self.path, f"not a run folder (no {RUN_JSON})")

    # -- run.json --------------------------------------------------------------------------
    @property
    def info_path(self) -> Path:
        return self.path / RUN_JSON

    def info(self) -> dict[str, Any]:
        """The run's ``run.json`` (a dict)."""
        p = self.info_path
        if not p.is_file():
            return {}
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InputError(p, "not valid JSON") from None
        if not isinstance(data, dict):
            raise InputError(p, "must hold a JSON object")
        return data

    def write_info(self, info: Mapping[str, Any]) -> None:
        """Replace ``run.json`` atomically."""
        _atomic_write_text(self.info_path, json.dumps(dict(info), indent=2, default=_json_default))

    def update_info(self, **fields: Any) -> dict[str, Any]:
        """Merge fields into ``run.json`` (atomic); returns the new content."""
        info = {**self.info(), **fields}
        self.write_info(info)
        return info

    @property
    def app(self) -> str:
        """The app that wrote the run (``run.json["app"]``)."""
        app = self.info().get("app")
        if not isinstance(app, str) or not app:
            raise InputError(self.info_path, "has no 'app'")
        return app

    def require_app(self, app: str) -> "RunDir":
        """Refuse a run another app wrote (one line), before its config is read as this app's
        (``eeg evaluate <a cardiac run>`` was a KeyError); a run that records no app passes.

        Returns:
            This run.
        """
        got = self.info().get("app")
        if got is not None and got != app:
            raise InputError(self.path, f"a run of app '{got}', not of app '{app}'")
        return self

    # -- config ----------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The resolved config saved beside the checkpoints (``config.yaml``)."""
        from medtransfer.shared.config import load_yaml

        return load_yaml(self.path / CONFIG)

    # -- checkpoints -----------------------------------------------------------------------
    def checkpoint_path(self, which: str = "best") -> Path:
        """``checkpoints/<which>.pt``."""
        if which not in CHECKPOINTS:
            raise MedTransferError(f"unknown checkpoint '{which}' (best or last)")
        return self.path / "checkpoints" / f"{which}.pt"

    def has_checkpoint(self, which: str = "best") -> bool:
        return self.checkpoint_path(which).is_file()

    def save_checkpoint(self, state: Mapping[str, Any], which: str) -> Path:
        """Save ``checkpoints/<which>.pt`` atomically and record its sha256 in ``run.json``.

        The new digest is recorded before the file is renamed into place (the previous digest
        stays accepted until then), so a job killed at any point leaves a folder that loads.
        """
        import torch

        path = self.checkpoint_path(which)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(plain(dict(state)), str(tmp))
        digest = sha256_file(tmp)
        info = self.info()
        sums = dict(info.get("checkpoints") or {})
        prev = sums.get(which, {}).get("sha256") if isinstance(sums.get(which), dict) else None
        sums[which] = {"sha256": digest, **({"previous": prev} if prev and prev != digest else {})}
        self.write_info({**info, "checkpoints": sums})
        os.replace(tmp, path)
        sums[which] = {"sha256": digest}
        self.write_info({**self.info(), "checkpoints": sums})
        return path

    def expected_sha256(self, which: str) -> set[str] | None:
        """Digests ``run.json`` accepts for a checkpoint (None = the run predates digests)."""
        rec = (self.info().get("checkpoints") or {}).get(which)
        if not isinstance(rec, dict) or not rec.get("sha256"):
            return None
        return {str(rec["sha256"])} | ({str(rec["previous"])} if rec.get("previous") else set())

    def load_model(self, which: str = "best", map_location: Any = "cpu") -> tuple[Any, dict[str, Any]]:
        """Rebuild the run's model from the spec its checkpoint records and load the weights.

        Returns:
            ``(model in eval mode, checkpoint dict)``.

        Raises:
            CheckpointError: the checkpoint records no model spec (a run from before specs: retrain),
                or its weights do not fit the rebuilt model.
        """
        st = self.load_checkpoint(which, map_location=map_location)
        spec = st.get("model_spec")
        if not isinstance(spec, Mapping):
            raise CheckpointError(f"{self.checkpoint_path(which)}: records no model spec; cannot rebuild the model")
        model = build_from_spec(spec)
        try:
            model.load_state_dict(st["model"])
        except (RuntimeError, KeyError) as e:
            raise CheckpointError(
                f"{self.checkpoint_path(which)}: weights do not fit the recorded model ({type(e).__name__})"
            ) from None
        return model.eval(), st

    def load_checkpoint(self, which: str = "best", map_location: Any = "cpu") -> dict[str, Any]:
        """Read a checkpoint safely and verify its sha256 against ``run.json``.

        Raises:
            CheckpointError: missing, altered, unreadable or unsafe (one line naming the file).
        """
        path = self.checkpoint_path(which)
        if not path.is_file():
            raise CheckpointError(f"{path}: checkpoint not found (unfinished run?)")
        want = self.expected_sha256(which)
        if want is None:
            raise CheckpointError(
                f"{self.info_path}: records no sha256 for checkpoints/{which}.pt; "
                "refused (a run from an older medtransfer or edited by hand: retrain)"
            )
        st = load_checkpoint_file(path, map_location=map_location, sha256=want)
        ran, holds = self.info().get("app"), st.get("app")
        if ran and holds and ran != holds:  # a digest edited into run.json does not make it this run's
            raise CheckpointError(f"{path}: checkpoint of app '{holds}' in a run of app '{ran}'; refused")
        return st


def _json_default(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)
