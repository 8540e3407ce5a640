"""Per-app runtime extras: the base install is the runtime core, each app's readers come with its
extra, a missing reader is one line naming the extra, and the CLI plus the image predict path run
with every app reader absent (simulated).  Cold-start speed itself is measured by the benches
(``python -m medtransfer.apps.eeg.bench --bundle B --sample F``), never asserted here."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from medtransfer.shared.utils.errors import MedTransferError

REPO = Path(__file__).resolve().parents[2]
#: the readers that must not be in the base install (import names)
APP_READERS = ("mne", "edfio", "scipy", "cv2", "pydicom", "SimpleITK", "tiffslide", "h5py", "skimage", "matplotlib")


def _project() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _names(reqs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in reqs}


def test_base_is_the_runtime_core_and_extras_carry_the_readers():
    p = _project()
    base = _names(p["dependencies"])
    assert base == {"numpy", "onnxruntime", "typer", "rich", "pyyaml", "pillow", "pydantic"}
    ex = {k: _names(v) for k, v in p["optional-dependencies"].items()}
    assert "edfio" in ex["eeg"] and "mne" not in ex["eeg"] and "mne" in ex["eeg-mne"]
    assert {"pydicom", "pylibjpeg", "opencv-python-headless"} <= ex["cardiac"]
    assert {"opencv-python-headless", "simpleitk"} <= ex["videoseg"]
    assert {"tiffslide", "h5py"} <= ex["wsi"]
    for app in ("eeg", "eeg-mne", "cardiac", "videoseg", "wsi"):
        assert ex[app] <= ex["all"], f"[all] misses some of [{app}]: {ex[app] - ex['all']}"
        assert not ex[app] & {"torch", "torchvision", "monai", "braindecode"}, f"[{app}] pulls training packages"
    assert "medtransfer[all]" in p["optional-dependencies"]["train"]  # researchers get every reader
    # `make install` installs every extra the tests need
    line = next(ln for ln in (REPO / "Makefile").read_text().splitlines() if '-e ".' in ln)
    got = set(re.search(r"\.\[([^\]]*)\]", line).group(1).split(","))
    assert {"all", "train", "dev"} <= got


@pytest.mark.parametrize("missing", ["cv2", "pydicom"])
def test_cardiac_missing_reader_is_one_line(monkeypatch, missing):
    from medtransfer.apps.cardiac.predict import CardiacPredictor
    from medtransfer.shared.cli.main import known_error_line

    monkeypatch.setitem(sys.modules, missing, None)  # what import does for a package that is not installed
    with pytest.raises(MedTransferError) as e:
        CardiacPredictor(None)  # refused before the bundle is touched
    line = known_error_line(e.value)
    assert line is not None and "\n" not in line and "install medtransfer[cardiac]" in line


def test_eeg_missing_reader_is_one_line(monkeypatch):
    from medtransfer.apps.eeg.predict import EEGPredictor

    monkeypatch.setitem(sys.modules, "edfio", None)
    with pytest.raises(MedTransferError, match=r"install medtransfer\[eeg\]"):
        EEGPredictor(None)


def test_readers_present_here_pass():
    from medtransfer.apps.cardiac.io import require_readers as cardiac_readers
    from medtransfer.apps.eeg.io import require_readers as eeg_readers

    eeg_readers()
    cardiac_readers()


@pytest.mark.slow
def test_cli_and_image_predict_run_without_any_app_reader(image_run, tmp_path):
    """The base install (simulated: every app reader unimportable, torch too) loads the CLI with all
    its app groups and answers an image with the core's image bundle."""
    img = sorted(Path(image_run["root"]).rglob("*.png"))[0]
    code = textwrap.dedent(f"""
        import json, sys
        for m in {list(APP_READERS) + ["torch"]!r}:
            sys.modules[m] = None
        from typer.testing import CliRunner
        from medtransfer.shared.cli.main import app
        r = CliRunner().invoke(app, ["predict", r"{image_run["bundle"]}", r"{img}"])
        assert r.exit_code == 0, r.output
        h = CliRunner().invoke(app, ["--help"])
        print(json.dumps({{"answer": json.loads(r.output.splitlines()[-1]), "help": h.output}}))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["answer"]["status"] == "ok"
    assert "warning: CLI of app" not in r.stderr, r.stderr[-2000:]
    for group in ("eeg", "cardiac", "videoseg", "wsi"):
        assert group in res["help"]
