"""The cardiac app's hooks for ``medtransfer estimate``: validation cases of a run, echo intensity statistics.

Torch-free (the app's readers + numpy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def reference_cases(run_dir: str | Path) -> list[dict[str, Any]]:
    """The VALIDATION files of the manifest the run was trained on (``run.json["manifest"]``; runs that do
    not record it give none, and their bundles say so)."""
    from medtransfer.shared.export.reference import manifest_val_cases
    from medtransfer.shared.rundir import RunDir

    manifest = RunDir(run_dir).info().get("manifest")
    return manifest_val_cases(manifest) if manifest else []


def input_stats(path: str | Path, bundle: Any) -> dict[str, float]:
    """Intensity histogram and summary of an echo image or cine (first 8 frames), as read.

    Raises:
        InputError: unreadable input (as in ``predict``).
    """
    from medtransfer.apps.cardiac.io import read_frames
    from medtransfer.shared.runtime.estimate import intensity_stats

    frames, _ = read_frames(Path(path), max_frames=8, overrides=bundle.meta.get("gates") or None)
    return intensity_stats(frames)
