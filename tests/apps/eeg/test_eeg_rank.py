"""eeg ``rank_features``: one frozen feature per training recording, cached, ranked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medtransfer.shared.transferability.rank import CandidateError, extract, rank, resolve_candidate


def test_eeg_rank_random_architectures_on_training_recordings(nmt_csv, eeg_small, tmp_path):
    from medtransfer.apps.eeg.data import load_split
    from medtransfer.apps.eeg.rank import rank_features
    from medtransfer.apps.eeg.train import make_config

    opts = {f"data.{k}": v for k, v in eeg_small.items()}
    opts["cache_dir"] = str(tmp_path / "cache")
    res = rank("eeg", nmt_csv, ["shallow", "eegnet"], tmp_path / "out", True, opts, progress=False)
    cfg = make_config(overrides=[f"{k}={v}" for k, v in opts.items() if "." in k])
    cfg["data"]["cache_dir"] = opts["cache_dir"]
    n_train = len(load_split(nmt_csv, cfg["data"], ["train"], progress=False)[0]["train"])
    assert res["task"] == "classification"
    assert {r["candidate"]: r["n"] for r in res["rows"]} == {"shallow": n_train, "eegnet": n_train}
    assert all(r["random_init"] for r in res["rows"])
    # the cached features are what the hook yields (seeded random init: the same numbers again)
    from medtransfer.shared.plugins import hook

    cand = resolve_candidate("shallow", "eeg", allow_random_init=True)
    cached, _, hit = extract(cand, nmt_csv, hook("eeg", "rank_features"), tmp_path / "out" / "feature_cache", opts)
    direct = np.concatenate([x for x, _ in rank_features(cand, nmt_csv, **opts)])
    assert hit and direct.shape[0] == n_train and np.allclose(cached, direct, atol=1e-5)
    with pytest.raises(CandidateError, match="candidate 'resnet18'.*not an eeg architecture"):
        rank("eeg", nmt_csv, ["resnet18"], tmp_path / "out2", True, opts, progress=False)


def test_a_run_candidates_cache_folder_gets_none_of_the_targets_windows(trained_run, nmt_csv, tmp_path):
    from medtransfer.shared.config import load_yaml

    run_cache = load_yaml(trained_run / "config.yaml")["data"]["cache_dir"]
    before = sorted(p.name for p in Path(run_cache).rglob("*"))
    res = rank("eeg", nmt_csv, [str(trained_run)], tmp_path / "out", progress=False)
    assert res["rows"][0]["n"] > 0
    assert sorted(p.name for p in Path(run_cache).rglob("*")) == before  # the run's folder is not written to
    assert any((nmt_csv.parent / ".eeg_cache").rglob("*.npy"))  # the target's own cache, as training uses
