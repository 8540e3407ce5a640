"""``medtransfer rank`` core: candidate checks, feature cache, ranking.csv / png, one-line errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medtransfer.shared.transferability import rank as R


def _fake_hook(calls: list):
    """A stand-in app hook: planted informative features for resnet18, noise for shallow."""

    def hook(candidate, manifest, **opts):
        calls.append(candidate.name)
        rng = np.random.default_rng(0)
        y = np.repeat([0, 1], 20)
        for i in range(0, 40, 16):  # batches
            yy = y[i : i + 16]
            noise = rng.normal(size=(len(yy), 6))
            x = noise + (4.0 * yy[:, None] if candidate.backbone == "resnet18" else 0.0)
            yield x, yy

    return hook


def test_rank_scores_ranks_caches_and_writes_outputs(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr("medtransfer.shared.plugins.hook", lambda app, which: _fake_hook(calls))
    man = tmp_path / "m.csv"
    man.write_text("path,label\na,0\n")
    res = R.rank("eeg", man, ["shallow", "resnet18"], tmp_path / "out", allow_random_init=True, progress=False)
    rows = {r["candidate"]: r for r in res["rows"]}
    assert res["task"] == "classification"
    assert rows["resnet18"]["rank_logme"] == 1 and rows["resnet18"]["rank_linear"] == 1
    assert rows["resnet18"]["rank_combined"] < rows["shallow"]["rank_combined"]
    assert rows["resnet18"]["random_init"] is True and rows["resnet18"]["n"] == 40
    with open(res["csv"], newline="") as f:
        table = list(csv.DictReader(f))
    assert [t["candidate"] for t in table] == ["resnet18", "shallow"]  # best combined rank first
    assert {f"rank_{s}" for s in R.SCORES} <= set(table[0])
    assert Path(res["png"]).stat().st_size > 0
    assert sorted(calls) == ["resnet18", "shallow"]
    R.rank("eeg", man, ["shallow", "resnet18"], tmp_path / "out", allow_random_init=True, progress=False)
    assert len(calls) == 2  # both from the feature cache
    man.write_text("path,label\nb,1\n")  # another manifest: new key, extracted again
    R.rank("eeg", man, ["shallow"], tmp_path / "out", allow_random_init=True, progress=False)
    assert len(calls) == 3


def test_the_cache_knows_two_sites_with_one_manifest_text_apart(tmp_path, monkeypatch):
    """Byte-identical manifests in two folders list different files: features are not shared."""
    calls: list = []
    monkeypatch.setattr("medtransfer.shared.plugins.hook", lambda app, which: _fake_hook(calls))
    mans = []
    for site in ("siteX", "siteY"):
        (tmp_path / site).mkdir()
        (tmp_path / site / "r1.edf").write_bytes(site.encode())
        (m := tmp_path / site / "m.csv").write_text("path,label\nr1.edf,normal\n")
        mans.append(m)
    cache = tmp_path / "cache"
    for m in mans:
        R.rank("eeg", m, ["shallow"], tmp_path / "o", allow_random_init=True, cache_dir=cache, progress=False)
    assert len(calls) == 2  # siteY was extracted, not answered with siteX's cached features
    R.rank("eeg", mans[1], ["shallow"], tmp_path / "o", allow_random_init=True, cache_dir=cache, progress=False)
    assert len(calls) == 2  # the same site again: from the cache
    (tmp_path / "siteY" / "r1.edf").write_bytes(b"re-exported, longer")  # a listed file changed
    R.rank("eeg", mans[1], ["shallow"], tmp_path / "o", allow_random_init=True, cache_dir=cache, progress=False)
    assert len(calls) == 3


def test_a_one_class_target_and_a_candidate_named_twice_are_refused(tmp_path, monkeypatch):
    def one_class(candidate, manifest, **opts):
        yield np.random.default_rng(0).normal(size=(8, 4)), np.zeros(8, np.int64)

    monkeypatch.setattr("medtransfer.shared.plugins.hook", lambda app, which: one_class)
    man = tmp_path / "m.csv"
    man.write_text("path,label\na,0\n")
    with pytest.raises(R.InputError, match="m.csv: its training split holds one class only"):
        R.rank("eeg", man, ["shallow"], tmp_path / "o", allow_random_init=True, progress=False)
    run = _run_folder(tmp_path / "runs" / "a", "eeg")
    with pytest.raises(R.MedTransferError, match="given twice"):
        R.rank("eeg", man, [str(run), str(run) + "/"], tmp_path / "o", progress=False)


def test_regression_targets_use_the_regression_variants():
    rng = np.random.default_rng(1)
    t = rng.normal(size=60)
    s = R.score_features(np.c_[t, rng.normal(size=(60, 3))], t)
    assert R.is_regression(t) and s["linear"] > 0.8  # Spearman of out-of-fold predictions


def _run_folder(path: Path, app: str, payload: bytes = b"not a checkpoint", sha: str = "0" * 64) -> Path:
    (path / "checkpoints").mkdir(parents=True)
    (path / "checkpoints" / "best.pt").write_bytes(payload)
    (path / "run.json").write_text(json.dumps({"app": app, "checkpoints": {"best": {"sha256": sha}}}))
    return path


def _cli(args: list[str]):
    from medtransfer.shared.cli.main import app

    return CliRunner().invoke(app, args)


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda d: str(d / "missing_run"), "not found"),
        (lambda d: str(_run_folder(d / "r", "cardiac")), "a run of app 'cardiac', not 'eeg'"),
        (lambda d: str(_run_folder(d / "r", "eeg")), "sha256 does not match"),
        (lambda d: "no_such_backbone", "unknown model"),
        (lambda d: "shallow", "--allow-random-init"),
    ],
    ids=["missing", "wrong-app", "corrupt-checkpoint", "unknown-backbone", "no-weights"],
)
def test_bad_candidates_are_one_line_errors_naming_them(tmp_path, make, needle, monkeypatch):
    monkeypatch.delenv("MEDTRANSFER_WEIGHTS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cache/medtransfer/weights
    man = tmp_path / "m.csv"
    man.write_text("path,label\na,normal\n")
    cand = make(tmp_path)
    r = _cli(["rank", "--app", "eeg", "--target", str(man), "--candidate", cand, "-o", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    err = r.output.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: candidate '{cand}'") and needle in err[0], err


def test_rank_module_imports_no_torch():
    code = (
        "import sys; import medtransfer.shared.cli.cmd_rank, medtransfer.shared.transferability.rank; "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_bundle_candidate_ranks_through_the_run_it_records(tmp_path, monkeypatch):
    import hashlib

    run = _run_folder(tmp_path / "run", "eeg", b"ckpt", hashlib.sha256(b"ckpt").hexdigest())
    b = tmp_path / "bundle"
    b.mkdir()
    (b / "metadata.json").write_text("{}")

    class FakeBundle:  # what load_bundle gives after verifying every file
        app, meta, sha256 = "eeg", {"run_dir": str(run)}, "f" * 64

    monkeypatch.setattr("medtransfer.shared.runtime.bundle.load_bundle", lambda p: FakeBundle())
    c = R.resolve_candidate(str(b), "eeg")
    assert (c.kind, c.path, c.sha) == ("bundle", run, "f" * 64)  # identity: the bundle's sha256
    FakeBundle.meta = {}
    with pytest.raises(R.CandidateError, match="records no run folder"):
        R.resolve_candidate(str(b), "eeg")
    FakeBundle.app = "cardiac"
    with pytest.raises(R.CandidateError, match="a bundle of app 'cardiac', not 'eeg'"):
        R.resolve_candidate(str(b), "eeg")
