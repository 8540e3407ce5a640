"""The videoseg app's hooks for ``medtransfer estimate`` (drift only): validation cases, frame intensity statistics.

Torch-free (the app's video reader + numpy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def reference_cases(run_dir: str | Path) -> list[dict[str, Any]]:
    """The VALIDATION videos of the run's manifest (``run.json["manifest"]``), each with its prompt.

    The prompt is what ``score`` / ``estimate`` give the predictor for a manifest row
    (:func:`medtransfer.shared.runtime.score.cases_from_manifest`): the row's ``mask`` / ``box`` column
    when it has one, else its label (the masks file, resolved against the manifest's folder) under the
    predictor's ``label_prompt`` key, whose first non-empty labelled frame prompts the tracker
    (:func:`medtransfer.apps.videoseg.data.prompt_mask`: EchoNet's first traced frame, TrackRAD's first
    label, as in evaluation).  No other labelled frame reaches the prediction.
    """
    from medtransfer.apps.videoseg.predict import VideoSegPredictor
    from medtransfer.shared.rundir import RunDir

    manifest = RunDir(run_dir).info().get("manifest")
    if not manifest:
        return []
    from medtransfer.shared.manifest import read_manifest

    base = Path(manifest).resolve().parent
    key = VideoSegPredictor.label_prompt
    out = []
    for r in read_manifest(manifest):
        if r.split != "val":
            continue
        extra = dict(r.extra)
        if str(r.label).strip() and not extra.get(key):
            extra[key] = str(base / r.label)
        out.append({"path": str(r.path), "label": str(r.label), "extra": extra})
    return out


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
