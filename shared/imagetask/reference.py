"""The image task's hooks for ``medtransfer estimate``: validation cases of a run, intensity statistics.

Torch-free (OpenCV + numpy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def reference_cases(run_dir: str | Path) -> list[dict[str, Any]]:
    """The VALIDATION images of the manifest the run was trained on (``run.json["manifest"]``)."""
    from medtransfer.shared.export.reference import manifest_val_cases
    from medtransfer.shared.rundir import RunDir

    manifest = RunDir(run_dir).info().get("manifest")
    return manifest_val_cases(manifest) if manifest else []


def input_stats(path: str | Path, bundle: Any) -> dict[str, float]:
    """Intensity histogram and summary of one image as read from disk (before resizing).

    Raises:
        InputError: the file is not a readable image.
    """
    import cv2

    from medtransfer.shared.runtime.estimate import intensity_stats
    from medtransfer.shared.utils.errors import InputError

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InputError(path, "not a readable image")
    return intensity_stats(img)
