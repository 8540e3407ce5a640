"""Overlapping training windows, class weights, model kwargs, the Bonn recipe and --recipe."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from medtransfer.apps.eeg.data import CachedRecording, WindowDataset

RECIPE = Path(__file__).resolve().parents[3] / "apps" / "eeg" / "recipes" / "bonn.yaml"
REAL = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "eeg"


def _cached(tmp_path, n_win=3, w=10, label="abnormal"):
    sig = np.arange(2 * n_win * w, dtype=np.float32).reshape(2, n_win * w)  # 2 channels, contiguous
    win = sig.reshape(2, n_win, w).transpose(1, 0, 2)
    f = tmp_path / f"r_{label}.npy"
    np.save(f, np.ascontiguousarray(win))
    return sig, CachedRecording(f"r_{label}", label, "train", f, n_win)


def test_window_stride_gives_overlapping_contiguous_windows(tmp_path):
    sig, rec = _cached(tmp_path)
    plain = WindowDataset([rec])
    assert len(plain) == 3 and np.array_equal(plain[1][0], sig[:, 10:20])
    ds = WindowDataset([rec], stride=4)
    starts = [st for _, st in ds.index]
    assert starts == [0, 4, 8, 12, 16, 20]  # last window ends at the last cached sample
    for k, st in enumerate(starts):
        x, y = ds[k]
        assert x.shape == (2, 10) and x.dtype == np.float32 and int(y) == 1
        assert np.array_equal(x, sig[:, st : st + 10])
    assert len(WindowDataset([rec], max_windows_per_recording=2, stride=4)) == 2
    assert len(WindowDataset([rec], stride=10)) == len(WindowDataset([rec], stride=0)) == 3  # >= window: no overlap


def test_class_weights_balanced():
    from medtransfer.apps.eeg.train import class_weights

    w = class_weights(np.array([0, 1, 1, 1]))
    assert w == pytest.approx([2.0, 2 / 3])
    assert class_weights(np.array([1, 1])) == pytest.approx([1.0, 1.0])


def test_config_keys_validated_and_stride_in_samples():
    from medtransfer.apps.eeg.train import build_model, make_config, train_stride
    from medtransfer.shared.utils.errors import MedTransferError

    cfg = make_config(
        overrides={
            "data": {
                "channels": ["CH1"],
                "car": False,
                "sfreq": 100.0,
                "window_seconds": 2.0,
                "window_stride_seconds": 0.5,
            },
            "model": {"name": "eegnet", "kwargs": {"F1": 4, "D": 1}},
            "train": {"class_weight": "balanced"},
        }
    )
    assert train_stride(cfg) == 50
    m = build_model(cfg)
    assert sum(p.numel() for p in m.parameters()) < sum(
        p.numel() for p in build_model({**cfg, "model": {"name": "eegnet", "kwargs": {}}}).parameters()
    )
    with pytest.raises(MedTransferError):
        make_config(overrides={"train": {"class_weight": "weird"}})
    with pytest.raises(MedTransferError):
        make_config(overrides={"data": {"window_stride_seconds": -1.0}})


def test_bonn_recipe_resolves_and_cli_flags_override(tmp_path):
    from medtransfer.apps.eeg.cli import _cfg
    from medtransfer.apps.eeg.train import train_stride

    cfg = _cfg(RECIPE, None, {})
    d = cfg["data"]
    assert d["channels"] == ["CH1"] and d["car"] is False and d["sfreq"] == pytest.approx(173.61)
    assert cfg["model"]["name"] == "eegnet" and train_stride(cfg) == 174
    assert cfg["model"]["drop_prob"] == 0.25 and cfg["model"]["kwargs"] == {"kernel_length": 87}
    cfg2 = _cfg(RECIPE, ["train.epochs=2"], {"window_stride_seconds": 2.5})
    assert cfg2["data"]["window_stride_seconds"] == 2.5 and cfg2["train"]["epochs"] == 2


def test_cli_train_window_stride_and_recipe_alias(tuab_csv, tmp_path):
    import json

    from typer.testing import CliRunner

    from medtransfer.apps.eeg.cli import app

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "data:\n  window_seconds: 4.0\n  crop_start_s: 4.0\n  crop_max_s: 0.0\n  sfreq: 50.0\n"
        "train:\n  epochs: 1\n  progress: false\n  class_weight: balanced\n"
    )
    r = CliRunner().invoke(
        app,
        [
            "train",
            "--manifest",
            str(tuab_csv),
            "--out",
            str(tmp_path / "run"),
            "--recipe",
            str(recipe),
            "--window-stride",
            "2",
            "--cache-dir",
            str(tmp_path / "c"),
        ],
    )
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    from medtransfer.shared.config import load_yaml

    cfg = load_yaml(tmp_path / "run" / "config.yaml")
    assert cfg["data"]["window_stride_seconds"] == 2.0 and cfg["train"]["class_weight"] == "balanced"
    # 5 windows of 4 s per recording -> starts every 2 s: 9 training windows per recording
    assert info["n_train_windows"] == 9 * info["n_train_recordings"]


@pytest.mark.skipif(not (REAL / "bonn" / "bonn_dev_int16.npz").is_file(), reason="../shared/data absent")
def test_import_bonn_relative_out(tmp_path):
    from medtransfer.apps.eeg.data import import_bonn
    from medtransfer.shared.manifest import read_manifest

    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        out = import_bonn(REAL / "bonn", Path("bonn") / "bonn.csv", limit_per_set=2)
    finally:
        os.chdir(cwd)
    recs = read_manifest(tmp_path / out)
    assert len(recs) == 10 and all(r.path.is_file() for r in recs)
