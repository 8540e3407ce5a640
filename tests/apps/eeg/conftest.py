"""Shared fixtures: small synthetic TUAB / NMT sets, one trained run, one exported bundle."""

from __future__ import annotations

from pathlib import Path

import pytest

from medtransfer.apps.eeg import synthetic as S

#: a small but complete recipe: paper channels, CAR, clip; short windows at 50 Hz for CPU speed
SMALL = {"window_seconds": 4.0, "crop_start_s": 4.0, "crop_max_s": 0.0, "sfreq": 50.0}
REAL = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "eeg"


@pytest.fixture(scope="session")
def tuab_root(tmp_path_factory) -> Path:
    return S.make_tuab(tmp_path_factory.mktemp("tuab"), n_per_class=5, eval_per_class=3, duration_s=24.0, seed=0)


@pytest.fixture(scope="session")
def nmt_root(tmp_path_factory) -> Path:
    return S.make_nmt(
        tmp_path_factory.mktemp("nmt") / "nmt_scalp_eeg_dataset",
        n_per_class=5,
        eval_per_class=3,
        duration_s=24.0,
        seed=1,
    )


@pytest.fixture(scope="session")
def tuab_csv(tuab_root, tmp_path_factory) -> Path:
    from medtransfer.apps.eeg.data import import_tuab

    return import_tuab(tuab_root, tmp_path_factory.mktemp("man") / "tuab.csv", **SMALL)


@pytest.fixture(scope="session")
def nmt_csv(nmt_root, tmp_path_factory) -> Path:
    from medtransfer.apps.eeg.data import import_nmt

    return import_nmt(nmt_root, tmp_path_factory.mktemp("man_nmt") / "nmt.csv", **SMALL)


def small_cfg(cache: Path, **train):
    """A resolved eeg config with the SMALL recipe (4 epochs of ShallowFBCSPNet)."""
    from medtransfer.apps.eeg.train import make_config

    t = {"epochs": 4, "lr": 3e-3, "batch_size": 32, "patience": 0, "progress": False, **train}
    return make_config(overrides={"data": {**SMALL, "cache_dir": str(cache)}, "model": {"name": "shallow"}, "train": t})


@pytest.fixture(scope="session")
def eeg_small() -> dict:
    """The SMALL data recipe."""
    return dict(SMALL)


@pytest.fixture(scope="session")
def eeg_cfg():
    """Factory: ``eeg_cfg(cache_dir, **train_overrides)`` -> resolved config."""
    return small_cfg


@pytest.fixture(scope="session")
def eeg_real() -> Path:
    """``../shared/data/eeg`` beside the repo; skips when absent."""
    if not REAL.is_dir():
        pytest.skip("../shared/data/eeg not present")
    return REAL


@pytest.fixture(scope="session")
def trained_run(tuab_csv, tmp_path_factory) -> Path:
    from medtransfer.apps.eeg.train import train

    d = tmp_path_factory.mktemp("run")
    train(tuab_csv, d / "run", small_cfg(d / "cache"), progress=False)
    return d / "run"


@pytest.fixture(scope="session")
def bundle(trained_run, tmp_path_factory) -> Path:
    from medtransfer.apps.eeg.export import export_run

    # a tiny run need not beat its trivial baseline (validation balanced accuracy 0.5): export it anyway
    return export_run(trained_run, tmp_path_factory.mktemp("bundle") / "b", force=True)
