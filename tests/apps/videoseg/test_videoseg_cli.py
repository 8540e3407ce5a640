"""The `medtransfer videoseg` group: synth / train / evaluate with the shared flags; evaluate takes a run or a bundle."""

from __future__ import annotations

import json

import pytest
from cliutil import run_main


def _main(args: list[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the console entry point run in-process."""
    return run_main(args, capsys)


def test_evaluate_a_run_folder_or_its_bundle(vs_run, vs_bundle, vs_echo, capsys):
    """`videoseg evaluate RUN -m M` (PyTorch) and `videoseg evaluate BUNDLE -m M` (ONNX) agree."""
    got = {}
    for name, model in (("run", vs_run["run_dir"]), ("bundle", vs_bundle)):
        code, out, err = _main(["videoseg", "evaluate", str(model), "-m", str(vs_echo["manifest"])], capsys)
        assert code == 0, err
        got[name] = json.loads(out)
    assert got["run"]["n_cases"] == got["bundle"]["n_cases"] >= 1
    assert got["run"]["model"]["dice"] == pytest.approx(got["bundle"]["model"]["dice"], abs=0.02)


def test_known_errors_are_one_line_exit_2(tmp_path, capsys):
    """Known errors propagate to main(): one line, exit 2 (the group used to exit 1)."""
    code, _, err = _main(["videoseg", "train", "-m", str(tmp_path / "none.csv"), "-o", str(tmp_path / "r")], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "none.csv" in lines[0], err


def test_synth_writes_the_echonet_layout(tmp_path, capsys):
    code, _, err = _main(["videoseg", "synth", "-o", str(tmp_path / "e"), "--n", "2", "--frames", "8"], capsys)
    assert code == 0, err
    assert (tmp_path / "e" / "FileList.csv").is_file() and len(list((tmp_path / "e" / "Videos").glob("*.avi"))) == 2
