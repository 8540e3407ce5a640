"""Shared fixtures: a tiny trained image bundle built once per session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repo; skips the test when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def image_run(tmp_path_factory) -> dict:
    """Shapes dataset -> manifest -> 2-epoch resnet18 run -> exported bundle (built once)."""
    from medtransfer.shared.imagetask.data import import_image_folder, make_shapes
    from medtransfer.shared.imagetask.task import export_run, train

    work = tmp_path_factory.mktemp("imagetask")
    root = make_shapes(work / "shapes", n_per_class=12, size=32)
    man = import_image_folder(root, work / "m.csv")
    train(man, work / "run", overrides=["train.epochs=2", "train.progress=false", "data.size=32"])
    bundle = export_run(work / "run", work / "bundle")
    return {"work": work, "root": root, "manifest": man, "run": work / "run", "bundle": bundle}
