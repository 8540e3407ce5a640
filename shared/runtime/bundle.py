"""ONNX bundles on disk: ``model.onnx`` (+ other model files), ``metadata.json``, ``README.md``.

Loading verifies the sha256 of every model file listed in the metadata and refuses a bundle
that does not match.  Torch-free.
"""
from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from medtransfer.shared.utils.errors import BundleError
from medtransfer.shared.utils.hashing import sha256_file

METADATA = "metadata.json"


class Bundle:
    """An exported model bundle.

    Args:
        path: the bundle folder.
        verify: check every file's sha256 against ``metadata.json``.
        threads: intra-op threads for ONNX Runtime sessions (0 = ORT default).
    """

    def __init__(self, path: str | Path, verify: bool = True, threads: int = 0) -> None:
        self.path = Path(path)
        meta_path = self.path / METADATA
        if not meta_path.is_file():
            raise BundleError(f"{self.path}: not a bundle (no {METADATA})")
        try:
            self.meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise BundleError(f"{meta_path}: not valid JSON ({e.msg})") from None
        for key in ("name", "version", "app", "task", "files"):
            if key not in self.meta:
                raise BundleError(f"{meta_path}: missing '{key}'")
        self.threads = threads
        self._sessions: dict[str, Any] = {}
        if verify:
            self.verify()

    # -- identity -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.meta["name"])

    @property
    def version(self) -> str:
        return str(self.meta["version"])

    @property
    def app(self) -> str:
        return str(self.meta["app"])

    @property
    def task(self) -> str:
        return str(self.meta["task"])

    @property
    def labels(self) -> list[str]:
        return list(self.meta.get("labels") or [])

    @property
    def preprocessing(self) -> dict[str, Any]:
        return dict(self.meta.get("preprocessing") or {})

    @cached_property
    def sha256(self) -> str:
        """A digest of the whole bundle: sha256 of its metadata file."""
        return sha256_file(self.path / METADATA)

    def provenance(self) -> dict[str, str]:
        """The fields every scored row carries."""
        return {"bundle_name": self.name, "bundle_version": self.version, "bundle_sha256": self.sha256}

    # -- integrity ------------------------------------------------------------------------
    def verify(self) -> None:
        """Check every listed file exists and matches its sha256.

        Raises:
            BundleError: naming the first file that is missing or altered.
        """
        files = self.meta.get("files") or {}
        if not files:
            raise BundleError(f"{self.path}: metadata lists no model files")
        for rel, digest in files.items():
            f = self.path / rel
            if not f.is_file():
                raise BundleError(f"{f}: listed in metadata but missing")
            if sha256_file(f) != digest:
                raise BundleError(f"{f}: sha256 does not match metadata (file altered or corrupt); bundle refused")

    # -- inference ------------------------------------------------------------------------
    def session(self, name: str = "model.onnx"):
        """An ONNX Runtime session for one model file (cached).

        Args:
            name: model file inside the bundle.
        """
        if name not in self._sessions:
            import onnxruntime as ort

            so = ort.SessionOptions()
            threads = self.threads or int(os.environ.get("MEDTRANSFER_THREADS", "0") or 0)
            if threads:
                so.intra_op_num_threads = threads
                so.inter_op_num_threads = 1
            so.log_severity_level = 3
            self._sessions[name] = ort.InferenceSession(
                str(self.path / name), sess_options=so, providers=_providers()
            )
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


def load_bundle(path: str | Path, verify: bool = True, threads: int = 0) -> Bundle:
    """Open and verify a bundle folder."""
    return Bundle(path, verify=verify, threads=threads)
