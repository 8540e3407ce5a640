"""The videoseg app's hooks for ``medtransfer estimate`` (drift only): validation cases, frame intensity statistics.

Torch-free (the app's video reader + numpy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def reference_cases(run_dir: str | Path) -> list[dict[str, Any]]:
    """The VALIDATION videos (with their prompt columns) of the run's manifest (``run.json["manifest"]``)."""
    from medtransfer.shared.export.reference import manifest_val_cases
    from medtransfer.shared.rundir import RunDir

    manifest = RunDir(run_dir).info().get("manifest")
    return manifest_val_cases(manifest) if manifest else []


def input_stats(path: str | Path, bundle: Any) -> dict[str, float]:
    """Intensity histogram and summary of up to 8 evenly spaced frames of one video.

    Raises:
        InputError: unreadable video (as in ``predict``).
    """
    import numpy as np

    from medtransfer.apps.videoseg.io import open_video
    from medtransfer.shared.runtime.estimate import intensity_stats

    reader = open_video(Path(path), overrides=bundle.meta.get("gates") or None)
    idx = sorted({int(i) for i in np.linspace(0, max(reader.n_frames - 1, 0), num=min(8, reader.n_frames))})
    return intensity_stats(reader.read(idx))
