"""Shared fixtures: one tiny phantom CACTUS copy, trained once per session (view -> grade -> bundle)."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY = ["preprocessing.size=48", "train.epochs=3", "train.batch_size=16", "train.lr=0.002", "train.progress=false"]


def real_echo() -> Path:
    """``<repo>/../shared/data/echo`` (tests skip when absent)."""
    return Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "echo"


@pytest.fixture(scope="session")
def cactus_copy(tmp_path_factory) -> Path:
    from medtransfer.apps.cardiac.synthetic import make_cactus_tree

    root = tmp_path_factory.mktemp("cactus")
    make_cactus_tree(root, n_per_view=24, n_sessions=8, size=(96, 128), seed=1)
    return root


@pytest.fixture(scope="session")
def manifest(cactus_copy, tmp_path_factory) -> Path:
    from medtransfer.apps.cardiac.data import import_cactus

    return import_cactus(cactus_copy, tmp_path_factory.mktemp("m") / "m.csv")


@pytest.fixture(scope="session")
def runs(manifest, tmp_path_factory) -> dict:
    from medtransfer.apps.cardiac.train import train_grade, train_view

    d = tmp_path_factory.mktemp("runs")
    v = train_view(manifest, d / "view", TINY)
    g = train_grade(manifest, d / "grade", d / "view", TINY)
    return {"view": v, "grade": g, "dir": d}


@pytest.fixture(scope="session")
def bundle(runs, tmp_path_factory) -> Path:
    import os

    from medtransfer.apps.cardiac.export import export_run

    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("b"))  # a relative out folder, as `medtransfer export RUN --out B` gets it
    try:
        # a tiny run may not beat its trivial baseline: exported anyway (marked unreliable if so)
        return export_run(runs["dir"] / "grade", "bundle", force=True)
    finally:
        os.chdir(cwd)
