"""The wsi app's hook for ``medtransfer estimate`` (drift only): feature-bag statistics.

No ``reference_cases`` yet: wsi runs do not record their validation bags' files (``--synthetic`` runs
hold them in memory), so wsi bundles carry no reference and ``estimate`` says so.  Torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


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
