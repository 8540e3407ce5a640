"""The image task's ``rank_features`` hook: ``medtransfer rank --app image`` on a shapes manifest."""

from __future__ import annotations

import numpy as np
import pytest

from medtransfer.shared.transferability.rank import CandidateError, rank


@pytest.fixture(scope="module")
def shapes_manifest(tmp_path_factory):
    from medtransfer.shared.imagetask.data import import_image_folder, make_shapes

    root = tmp_path_factory.mktemp("shapes_rank")
    return import_image_folder(make_shapes(root / "shapes", n_per_class=8, size=32), root / "m.csv")


def test_image_rank_features_cover_the_training_split(shapes_manifest, tmp_path):
    from medtransfer.shared.config import resolve_config
    from medtransfer.shared.imagetask.task import _split, defaults
    from medtransfer.shared.manifest import by_split, read_manifest

    recs = read_manifest(shapes_manifest, require_label=True)
    _split(recs, resolve_config(defaults(), None, []))
    n_train = len(by_split(recs, "train"))
    r = rank("image", shapes_manifest, ["resnet18"], tmp_path / "r", True, {"data.size": 32}, progress=False)
    row = r["rows"][0]
    assert r["task"] == "classification" and row["n"] == n_train and row["dim"] == 512 and row["random_init"]
    assert np.isfinite([row[s] for s in ("logme", "tmi", "knn", "linear")]).all()
    # another input size changes the features (the option reaches the hook), the cache keys on it
    r2 = rank("image", shapes_manifest, ["resnet18"], tmp_path / "r2", True, {"data.size": 48}, progress=False)
    assert r2["rows"][0]["n"] == n_train and r2["rows"][0]["logme"] != row["logme"]
    with pytest.raises(CandidateError, match="candidate 'resnet18'"):
        rank("image", shapes_manifest, ["resnet18"], tmp_path / "m", progress=False)  # no weights, no random init
