"""cardiac ``rank_features``: grading ranks with the regression variants, views with the classification ones."""

from __future__ import annotations

import pytest

from medtransfer.shared.manifest import read_manifest
from medtransfer.shared.transferability.rank import CandidateError, rank


@pytest.fixture(scope="module")
def small_manifest(tmp_path_factory):
    from medtransfer.apps.cardiac.data import import_cactus
    from medtransfer.apps.cardiac.synthetic import make_cactus_tree

    root = tmp_path_factory.mktemp("cactus_rank")
    make_cactus_tree(root, n_per_view=6, n_sessions=3, size=(64, 80), seed=2)
    return import_cactus(root, root / "m.csv")


def test_cardiac_rank_grade_and_view_targets(small_manifest, tmp_path):
    manifest = small_manifest
    train_rows = [r for r in read_manifest(manifest) if r.split == "train"]
    n_graded = sum(r.extra.get("grade", "") != "" for r in train_rows)
    g = rank("cardiac", manifest, ["resnet18"], tmp_path / "g", True, {"preprocessing.size": 32}, progress=False)
    assert g["task"] == "regression" and g["rows"][0]["n"] == n_graded and g["rows"][0]["dim"] == 512
    v = rank(
        "cardiac", manifest, ["resnet18"], tmp_path / "v", True, {"preprocessing.size": 32, "stage": "view"}, False
    )
    assert v["task"] == "classification" and v["rows"][0]["n"] == len(train_rows)
    assert v["rows"][0]["logme"] != g["rows"][0]["logme"]
    with pytest.raises(CandidateError, match="candidate 'resnet18'.*stage must be grade or view"):
        rank("cardiac", manifest, ["resnet18"], tmp_path / "b", True, {"stage": "age"}, progress=False)
    missing = f"resnet18={tmp_path / 'nope.pth'}"
    with pytest.raises(CandidateError, match="not found"):
        rank("cardiac", manifest, [missing], tmp_path / "m", progress=False)


def test_cardiac_subset_manifest_keeps_graded_rows_per_split_and_view(small_manifest, tmp_path):
    from collections import Counter

    from medtransfer.apps.cardiac.rank import subset_manifest

    sub = read_manifest(subset_manifest(small_manifest, tmp_path / "s" / "sub.csv", {"train": 2, "test": 1}))
    full = [r for r in read_manifest(small_manifest) if r.extra.get("grade", "") != ""]
    counts = Counter((r.split, r.label) for r in sub)
    want = {
        k: min(n, {"train": 2, "test": 1}.get(k[0], 0)) for k, n in Counter((r.split, r.label) for r in full).items()
    }
    assert counts == {k: v for k, v in want.items() if v}
    assert all(r.path.is_file() and r.extra["grade"] != "" for r in sub)  # paths still reach the original files
