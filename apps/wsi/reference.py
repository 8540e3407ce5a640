"""The wsi app's hooks for ``medtransfer estimate`` (drift only): validation bags of a run, feature-bag statistics.

A survival bundle's reference is drift-only: the feature statistics of its run's validation bags
(:func:`input_stats`) and the distribution of its outputs (risk) on them; ``estimate`` reports no
accuracy for it.  wsi runs record those bags in ``RUN_DIR/reference_bags/manifest.csv``
(:func:`medtransfer.apps.wsi.train.record_reference`: the validation patients and the held-out fold,
``--synthetic`` bags written beside it).  Torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medtransfer.shared.utils.errors import MedTransferError

#: as ``medtransfer.apps.wsi.train.REFERENCE_DIR`` (not imported: that module imports torch)
REFERENCE_DIR = "reference_bags"


def reference_cases(run_dir: str | Path) -> list[dict[str, Any]]:
    """The VALIDATION bags of a run (``split=val`` rows of its reference manifest; never the test fold).

    Raises:
        MedTransferError: the run records why it has none (no validation patients), or it predates
            the recording (the reason lands in the bundle's metadata and ``estimate``'s refusal).
    """
    from medtransfer.shared.export.reference import manifest_val_cases
    from medtransfer.shared.rundir import RunDir

    run = RunDir(run_dir)
    info = run.info()
    ref = (info.get("wsi") or {}).get("reference")
    if not isinstance(ref, dict):
        raise MedTransferError(
            "the run predates recorded validation bags; train it again with this medtransfer, then export"
        )
    if not ref.get("available"):
        raise MedTransferError(str(ref.get("reason") or "the run holds out no validation patients"))
    manifest = Path(str(info.get("manifest") or ""))
    if not manifest.is_file():  # the run folder was moved: the manifest travels inside it
        manifest = run.path / str(ref.get("manifest") or f"{REFERENCE_DIR}/manifest.csv")
    return manifest_val_cases(manifest)


def input_stats(path: str | Path, bundle: Any) -> dict[str, float]:
    """Feature statistics of one ``.h5`` bag (slides: none; their features come from the encoder).

    Raises:
        InputError: an unreadable or implausible bag (as in ``predict``).
    """
    from medtransfer.apps.wsi.features import read_bag
    from medtransfer.shared.runtime.estimate import feature_stats

    path = Path(path)
    if path.suffix.lower() != ".h5":
        return {}
    feats, _, _ = read_bag(path, bundle.meta.get("gates") or None)
    return feature_stats(feats)
