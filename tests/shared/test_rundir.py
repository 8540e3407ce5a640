"""Run folders: checkpoints hold plain data, load with weights_only, and are sha256-verified.

The planted-pickle tests run every command that reads a checkpoint against a run folder whose
checkpoints (and weight files) hold a pickle that would create a marker file when unpickled
unsafely.  The marker must never appear; each command fails with one line naming the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from cliutil import run_main

from medtransfer.shared.rundir import CheckpointError, RunDir, load_checkpoint_file, plain
from medtransfer.shared.utils.hashing import sha256_file


class _Evil:
    """Unpickling this runs a shell command (what a hostile shared run folder would plant)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": _Evil(marker), "config": {}}, str(path))


def _evil_run(root: Path, app: str, marker: Path, record_sha: bool = True) -> Path:
    """A run folder for ``app`` whose checkpoints are planted pickles (run.json even 'vouches' for them)."""
    run = root / f"evil_{app}"
    for which in ("best", "last"):
        _plant(run / "checkpoints" / f"{which}.pt", marker)
    sums = {w: {"sha256": sha256_file(run / "checkpoints" / f"{w}.pt")} for w in ("best", "last")}
    info = {"app": app, "task": "x", "wsi": {"in_dim": 8, "edges": [0.0, 1.0]}}
    # it even claims to beat its baseline: export gets as far as opening the checkpoint
    info["baseline"] = {
        "metric": "accuracy",
        "model": 0.9,
        "baseline": 0.5,
        "baseline_name": "m",
        "beats_baseline": True,
    }
    if record_sha:
        info["checkpoints"] = sums
    (run / "run.json").write_text(json.dumps(info))
    (run / "config.yaml").write_text("model: {}\ntrain: {}\ndata: {}\n")
    return run


def _main(args: list[str], capsys) -> tuple[int, str]:
    """(exit code, stderr) of the console entry point run in-process."""
    code, _, err = run_main(args, capsys)
    return code, err


# ---------------------------------------------------------------------------------- plain / safe IO
def test_plain_turns_numpy_into_loadable_data(tmp_path):
    st = {"a": np.float32(1.5), "b": np.arange(3), "c": (1, Path("x")), "d": [np.int64(2)], "t": torch.ones(2)}
    run = RunDir(tmp_path / "r", must_exist=False)
    run.write_info({"app": "image"})
    run.save_checkpoint(st, "best")
    got = run.load_checkpoint("best")
    assert got["a"] == 1.5 and isinstance(got["a"], float)
    assert torch.equal(got["b"], torch.arange(3)) and got["c"] == (1, "x") and got["d"] == [2]
    with pytest.raises(TypeError, match="object"):
        plain({"x": object()})


def test_checkpoint_sha_recorded_and_verified(tmp_path):
    run = RunDir(tmp_path / "r", must_exist=False)
    run.write_info({"app": "image"})
    p = run.save_checkpoint({"model": {"w": torch.zeros(2)}}, "last")
    assert run.info()["checkpoints"]["last"]["sha256"] == sha256_file(p)
    # an edited (still perfectly loadable) checkpoint is refused: run.json no longer vouches for it
    torch.save({"model": {"w": torch.ones(2)}}, str(p))
    with pytest.raises(CheckpointError, match=r"last\.pt: sha256 does not match"):
        run.load_checkpoint("last")


def test_a_checkpoint_of_another_app_is_refused_even_with_its_digest_recorded(tmp_path):
    """Found by a hostile audit: an EEG best.pt copied into a cardiac run, its sha256 written into
    run.json, was rebuilt as an EEG model and export crashed with a KeyError traceback."""
    run = RunDir(tmp_path / "r", must_exist=False)
    run.write_info({"app": "cardiac"})
    p = run.save_checkpoint({"model": {"w": torch.zeros(2)}, "app": "eeg"}, "best")
    assert run.info()["checkpoints"]["best"]["sha256"] == sha256_file(p)
    with pytest.raises(CheckpointError, match=r"best\.pt: checkpoint of app 'eeg' in a run of app 'cardiac'"):
        run.load_checkpoint("best")
    run.save_checkpoint({"model": {"w": torch.zeros(2)}, "app": "cardiac"}, "best")
    assert run.load_checkpoint("best")["app"] == "cardiac"


def test_run_without_recorded_sha_is_refused(tmp_path):
    run = RunDir(tmp_path / "r", must_exist=False)
    run.write_info({"app": "image"})
    (run.path / "checkpoints").mkdir()
    torch.save({"model": {}}, str(run.checkpoint_path("best")))
    with pytest.raises(CheckpointError, match="records no sha256"):
        run.load_checkpoint("best")


def test_kill_between_record_and_rename_still_loads(tmp_path, monkeypatch):
    """run.json is updated before the rename: a job killed in between leaves a loadable folder."""
    run = RunDir(tmp_path / "r", must_exist=False)
    run.write_info({"app": "image"})
    run.save_checkpoint({"model": {"w": torch.zeros(1)}}, "last")
    real_replace = os.replace

    def killed(src, dst):
        if str(dst).endswith("last.pt"):
            raise KeyboardInterrupt  # the process dies right before the rename
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        run.save_checkpoint({"model": {"w": torch.ones(1)}}, "last")
    monkeypatch.setattr(os, "replace", real_replace)
    assert torch.equal(run.load_checkpoint("last")["model"]["w"], torch.zeros(1))


def test_truncated_checkpoint_is_one_line(tmp_path):
    f = tmp_path / "w.pt"
    torch.save({"model": {"w": torch.zeros(100)}}, str(f))
    f.write_bytes(f.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as e:
        load_checkpoint_file(f)
    assert "\n" not in str(e.value)


def test_a_file_that_is_no_pickle_is_called_unreadable_not_untrusted(tmp_path):
    f = tmp_path / "labels.csv"  # e.g. a CSV given as --base
    f.write_text("path,label\na.png,circle\n")
    with pytest.raises(CheckpointError, match="labels.csv: not a readable PyTorch checkpoint"):
        load_checkpoint_file(f)


def test_planted_pickle_refused_by_loader(tmp_path):
    marker = tmp_path / "PWNED"
    f = tmp_path / "evil.pt"
    _plant(f, marker)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint_file(f)
    assert not marker.exists()


def test_run_json_garbage_is_one_line(tmp_path):
    (tmp_path / "run.json").write_text("{not json")
    from medtransfer.shared.utils.errors import InputError

    with pytest.raises(InputError, match="not valid JSON"):
        RunDir(tmp_path).info()


# ------------------------------------------------------------------- every command that loads one
def _commands(run: Path, tmp: Path, manifest: Path, evil_weights: Path) -> list[list[str]]:
    return [
        ["export", str(run.parent / "evil_image"), "--out", str(tmp / "b_image")],
        ["export", str(run.parent / "evil_cardiac"), "--out", str(tmp / "b_cardiac")],
        ["export", str(run.parent / "evil_eeg"), "--out", str(tmp / "b_eeg")],
        ["export", str(run.parent / "evil_videoseg"), "--out", str(tmp / "b_videoseg")],
        ["export", str(run.parent / "evil_wsi"), "--out", str(tmp / "b_wsi")],
        ["image", "evaluate", str(run.parent / "evil_image"), "--manifest", str(manifest)],
        ["eeg", "evaluate", str(run.parent / "evil_eeg"), "--manifest", str(manifest)],
        ["cardiac", "evaluate", str(run.parent / "evil_cardiac"), "-m", str(manifest)],
        ["wsi", "evaluate", str(run.parent / "evil_wsi"), "--labels", str(tmp), "--synthetic"],
        [
            "cardiac",
            "train",
            "--stage",
            "grade",
            "-m",
            str(manifest),
            "-o",
            str(tmp / "g"),
            "--init",
            str(run.parent / "evil_cardiac"),
        ],
        ["eeg", "train", "--manifest", str(manifest), "--out", str(tmp / "e"), "--init", str(run.parent / "evil_eeg")],
        ["eeg", "train", "--manifest", str(manifest), "--out", str(tmp / "e2"), "--init", str(evil_weights)],
        # resume: a planted last.pt in the output run folder of a training command
        [
            "image",
            "train",
            "--manifest",
            str(manifest),
            "--out",
            str(run.parent / "evil_image"),
            "--set",
            "train.epochs=1",
        ],
        # pretrained weights named in the config
        [
            "image",
            "train",
            "--manifest",
            str(manifest),
            "--out",
            str(tmp / "w"),
            "--set",
            f"model.pretrained={evil_weights}",
            "--set",
            "train.epochs=1",
        ],
    ]


def test_planted_pickle_never_runs_from_any_command(tmp_path, capsys, image_run):
    marker = tmp_path / "PWNED"
    for app in ("image", "cardiac", "eeg", "videoseg", "wsi"):
        run = _evil_run(tmp_path, app, marker)
    evil_weights = tmp_path / "weights.pt"
    _plant(evil_weights, marker)
    for args in _commands(run, tmp_path, image_run["manifest"], evil_weights):
        code, err = _main(args, capsys)
        assert not marker.exists(), f"planted pickle ran: {args}"
        assert code != 0, args
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and "Traceback" not in err, (args, err)
        assert ".pt" in lines[0] and ("refused" in lines[0] or "not a medtransfer" in lines[0]), (args, lines[0])


# ------------------------------------------------------------------------------ model spec
def test_model_is_rebuilt_from_the_spec_its_checkpoint_records(image_run):
    """The image task records registry name + args; RunDir.load_model rebuilds it with no app code."""
    model, ck = RunDir(image_run["run"]).load_model("best")
    spec = RunDir(image_run["run"]).info()["model_spec"]
    assert ck["model_spec"] == spec and spec["registry"] == "resnet18"
    assert spec["kwargs"]["num_classes"] == len(ck["labels"])
    x = torch.zeros(2, spec["kwargs"]["in_chans"], 32, 32)
    assert model(x).shape == (2, len(ck["labels"])) and not model.training


def test_a_spec_naming_foreign_code_is_refused(tmp_path):
    from medtransfer.shared.rundir import model_spec

    run = RunDir(tmp_path / "r", must_exist=False)
    run.write_info({"app": "image"})
    run.save_checkpoint({"model": {}, "model_spec": model_spec(builder="os:system", command="touch x")}, "best")
    with pytest.raises(CheckpointError, match="not a medtransfer builder"):
        run.load_model("best")
    # inside medtransfer too: only functions marked @model_builder may be named
    run.save_checkpoint(
        {"model": {}, "model_spec": model_spec(builder="medtransfer.shared.manifest:write_manifest", records=[])},
        "best",
    )
    with pytest.raises(CheckpointError, match="not a medtransfer builder"):
        run.load_model("best")
