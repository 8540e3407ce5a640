"""Write ``metadata.json`` (MONAI-bundle-like), the ``README.md`` model card and ``checksums.sha256``."""

from __future__ import annotations

import json
import os
import platform
import time
from importlib import metadata as im
from pathlib import Path
from typing import Any

from medtransfer.shared.export.guard import current_verdict
from medtransfer.shared.runtime.schema import (
    CARD,
    CHECKSUMS,
    METADATA,
    OS_FILES,
    SCHEMA,
    format_checksums,
    is_plain_name,
    validate_metadata,
)
from medtransfer.shared.utils.errors import BundleError
from medtransfer.shared.utils.hashing import sha256_file

LIBS = (
    "medtransfer",
    "torch",
    "onnx",
    "onnxruntime",
    "numpy",
    "timm",
    "monai",
    "braindecode",
    "mne",
    "sam2",
    "opencv-python-headless",
    "pydicom",
    "tiffslide",
    "scikit-survival",
)


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
    version: str | None = None,
    description: str = "",
    intended_use: str = "Research use only. Not a medical device.",
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the bundle's metadata, model card and ``checksums.sha256`` (schema ``medtransfer-bundle/2``).

    The metadata goes through the same typed model the reader validates
    (:class:`medtransfer.shared.runtime.schema.BundleMeta`); the checksums cover every file in
    the folder, so the folder must hold only the listed model files (plus files this call writes).

    Args:
        out_dir: the bundle folder (model files already written inside it).
        name: bundle name.
        app: app name (``predict`` picks the app's predictor from it).
        task: task name.
        files: model files directly inside ``out_dir``: plain names, or paths (absolute, or
            relative to the working directory) that resolve to files in ``out_dir``.
        inputs: input name -> spec (shape with -1 for dynamic dims, dtype, value_range, ...).
        outputs: output name -> spec.
        preprocessing: every parameter the predictor needs to reproduce the input.
        labels: class names, if any.
        metrics: validation / test metrics (plus parity, quantization deltas...).
        data_card: path of the data card (relative to the repo, e.g. ``data_cards/cactus.md``).
        version: bundle version (default: the installed medtransfer version).
        description: one paragraph for the model card.
        intended_use: intended-use statement.
        extra: more keys for metadata.json (may not replace the keys above).

    Returns:
        Path of ``metadata.json``.

    Raises:
        BundleError: a model file outside the folder or missing, an unlisted file in the folder,
            or metadata the schema refuses.
    """
    out_dir = Path(out_dir).resolve()
    hashes: dict[str, str] = {}
    for f in files:
        rel = _model_file_name(out_dir, f)
        hashes[rel] = sha256_file(out_dir / rel)
    meta: dict[str, Any] = {
        "schema": SCHEMA,
        "name": name,
        "version": version or _package_version(),
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
    }
    clash = sorted(set(extra or {}) & set(meta))
    if clash:
        raise ValueError(f"write_bundle: extra keys may not replace metadata fields: {', '.join(clash)}")
    meta.update(extra or {})
    verdict = current_verdict()  # set by export_bundle: the run's trivial-baseline comparison
    if verdict:
        if "metric" in verdict:  # a forced run without any comparison has only its reason
            meta["baseline"] = verdict
        if verdict.get("unreliable"):
            meta["unreliable"] = verdict["unreliable"]
    # JSON round trip (numpy scalars, paths -> JSON types), then the one typed description
    desc = validate_metadata(json.loads(json.dumps(meta, default=_jsonable)), f"{out_dir / METADATA} (being written)")
    path = out_dir / METADATA
    (out_dir / CHECKSUMS).unlink(missing_ok=True)
    path.write_text(desc.to_json(), encoding="utf-8")
    (out_dir / CARD).write_text(_card(desc.to_dict()), encoding="utf-8")
    write_checksums(out_dir, list(hashes))
    return path


def _package_version() -> str:
    from medtransfer.shared import __version__

    return str(__version__)


def write_checksums(out_dir: str | Path, model_files: list[str]) -> Path:
    """Write ``checksums.sha256`` over the metadata, the model card and ``model_files``.

    Args:
        out_dir: the bundle folder.
        model_files: the plain names listed in the metadata's ``files``.

    Returns:
        Path of ``checksums.sha256``.

    Raises:
        BundleError: the folder holds anything else (except the ignored OS view files), a link
            or a sub-folder.
    """
    out_dir = Path(out_dir)
    want = {METADATA, CARD, *model_files}
    for e in sorted(os.scandir(out_dir), key=lambda e: e.name):
        if e.name == CHECKSUMS or (e.name in OS_FILES and e.is_file(follow_symlinks=False)):
            continue
        if e.is_symlink() or not e.is_file(follow_symlinks=False):
            raise BundleError(f"{out_dir / e.name}: a bundle holds only regular files (no links or folders)")
        if e.name not in want:
            raise BundleError(f"{out_dir / e.name}: not one of the bundle's files; list it in files= or remove it")
    digests = {n: sha256_file(out_dir / n) for n in want}
    path = out_dir / CHECKSUMS
    path.write_text(format_checksums(digests), encoding="utf-8", newline="\n")
    return path


def _model_file_name(out_dir: Path, f: str | Path) -> str:
    """The plain name of a model file that must lie directly inside ``out_dir``."""
    p = Path(f)
    cands = [p] if p.is_absolute() else [out_dir / p, Path.cwd() / p]
    for c in cands:
        c = c.resolve()
        if c.parent == out_dir and c.is_file() and is_plain_name(c.name) and c.name not in (METADATA, CARD, CHECKSUMS):
            return c.name
    raise BundleError(f"{f}: not a model file directly inside the bundle folder {out_dir}")


def _jsonable(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    return str(x)


def _card(meta: dict[str, Any]) -> str:
    lines = [f"# {meta['name']} (v{meta['version']})", ""]
    if meta.get("unreliable"):
        lines += [f"> **UNRELIABLE**: {meta['unreliable']}. Exported with --force; every answer is flagged.", ""]
    b = meta.get("baseline")
    lines += [meta.get("description") or "", ""]
    if b:
        lines += [
            f"- trivial baseline ({b['split']} {b['metric']}): model {b['model']:.4g} vs {b['baseline_name']} "
            f"{b['baseline']:.4g}",
            "",
        ]
    lines += [
        f"- app / task: `{meta['app']}` / `{meta['task']}`",
        f"- intended use: {meta['intended_use']}",
        f"- data card: `{meta['data_card'] or 'n/a'}`",
        f"- created: {meta['created']}",
        "",
        "## Inputs",
    ]
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
    lines += [
        "",
        f"Every file of this folder (this card and `{METADATA}` included) is listed in `{CHECKSUMS}`:",
        f"`sha256sum -c {CHECKSUMS}` inside the folder, or `medtransfer verify <this folder>`, checks them.",
    ]
    if meta.get("audit"):  # `medtransfer export --audit MANIFEST` (shared.runtime.audit)
        from medtransfer.shared.runtime.audit import card_section

        lines += ["", card_section(meta["audit"]).rstrip()]
    lines += [
        "",
        "## Use",
        "```",
        "medtransfer predict <this folder> INPUT",
        "medtransfer score <this folder> --input-dir DIR --out results.csv",
        "```",
        "",
    ]
    return "\n".join(lines)
