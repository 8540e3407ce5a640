"""Write ``metadata.json`` (MONAI-bundle-like) and the ``README.md`` model card."""
from __future__ import annotations

import json
import platform
import time
from importlib import metadata as im
from pathlib import Path
from typing import Any

from medtransfer.shared.utils.hashing import sha256_file

LIBS = ("medtransfer", "torch", "onnx", "onnxruntime", "numpy", "timm", "monai", "braindecode", "mne", "sam2",
        "opencv-python-headless", "pydicom", "tiffslide", "scikit-survival")


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that matter for reproducing a bundle."""
    out = {"python": platform.python_version()}
    for lib in LIBS:
        try:
            out[lib] = im.version(lib)
        except im.PackageNotFoundError:
            pass
    return out


def write_bundle(
    out_dir: str | Path,
    *,
    name: str,
    app: str,
    task: str,
    files: list[str | Path],
    inputs: dict[str, Any],
    outputs: dict[str, Any],
    preprocessing: dict[str, Any],
    labels: list[str] | None = None,
    metrics: dict[str, Any] | None = None,
    data_card: str = "",
    version: str = "0.1.0",
    description: str = "",
    intended_use: str = "Research use only. Not a medical device.",
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the bundle's metadata and model card; hashes every model file.

    Args:
        out_dir: the bundle folder (model files already written inside it).
        name: bundle name.
        app: app name (``predict`` picks the app's predictor from it).
        task: task name.
        files: model files inside ``out_dir`` (relative or absolute).
        inputs: input name -> spec (shape with -1 for dynamic dims, dtype, value_range, ...).
        outputs: output name -> spec.
        preprocessing: every parameter the predictor needs to reproduce the input.
        labels: class names, if any.
        metrics: validation / test metrics (plus parity, quantization deltas...).
        data_card: path of the data card (relative to the repo, e.g. ``data_cards/cactus.md``).
        version: bundle version.
        description: one paragraph for the model card.
        intended_use: intended-use statement.
        extra: more keys for metadata.json.

    Returns:
        Path of ``metadata.json``.
    """
    out_dir = Path(out_dir)
    hashes = {}
    for f in files:
        p = Path(f)
        p = p if p.is_absolute() else out_dir / p
        hashes[p.relative_to(out_dir).as_posix()] = sha256_file(p)
    meta = {
        "schema": "medtransfer-bundle/1",
        "name": name,
        "version": version,
        "app": app,
        "task": task,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "description": description,
        "intended_use": intended_use,
        "network_data_format": {"inputs": inputs, "outputs": outputs},
        "inputs": inputs,
        "outputs": outputs,
        "preprocessing": preprocessing,
        "labels": list(labels or []),
        "metrics": metrics or {},
        "data_card": data_card,
        "libraries": library_versions(),
        "files": hashes,
        **(extra or {}),
    }
    path = out_dir / "metadata.json"
    path.write_text(json.dumps(meta, indent=2, default=_jsonable), encoding="utf-8")
    (out_dir / "README.md").write_text(_card(meta), encoding="utf-8")
    return path


def _jsonable(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    return str(x)


def _card(meta: dict[str, Any]) -> str:
    lines = [f"# {meta['name']} (v{meta['version']})", "", meta.get("description") or "", "",
             f"- app / task: `{meta['app']}` / `{meta['task']}`", f"- intended use: {meta['intended_use']}",
             f"- data card: `{meta['data_card'] or 'n/a'}`", f"- created: {meta['created']}", "", "## Inputs"]
    for k, v in meta["inputs"].items():
        lines.append(f"- `{k}`: {json.dumps(v, default=_jsonable)}")
    lines += ["", "## Outputs"]
    for k, v in meta["outputs"].items():
        lines.append(f"- `{k}`: {json.dumps(v, default=_jsonable)}")
    if meta["labels"]:
        lines += ["", "## Labels", ", ".join(f"`{x}`" for x in meta["labels"])]
    lines += ["", "## Preprocessing", "```json", json.dumps(meta["preprocessing"], indent=2, default=_jsonable), "```"]
    lines += ["", "## Metrics", "```json", json.dumps(meta["metrics"], indent=2, default=_jsonable), "```"]
    lines += ["", "## Files (sha256)"] + [f"- `{k}`: `{v}`" for k, v in meta["files"].items()]
    lines += ["", "## Use", "```", f"medtransfer predict <this folder> INPUT", f"medtransfer score <this folder> --input-dir DIR --out results.csv", "```", ""]
    return "\n".join(lines)
