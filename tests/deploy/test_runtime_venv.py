"""Install the base requirements alone into a clean venv; predict and score without torch."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_base_install_runs_predict_and_score_without_torch(image_run, tmp_path):
    venv = tmp_path / "rt"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-c",
                        str(REPO / "constraints.txt"), str(REPO)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([str(py), "-c", "import importlib.util as u; print(u.find_spec('torch') is None)"],
                       capture_output=True, text=True)
    assert r.stdout.strip() == "True", "torch got installed by the base requirements"
    exe = venv / "bin" / "medtransfer"
    img = sorted(Path(image_run["root"]).rglob("*.png"))[0]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([str(exe), "predict", str(image_run["bundle"]), str(img)], capture_output=True, text=True,
                       env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["status"] == "ok"
    r = subprocess.run([str(exe), "score", str(image_run["bundle"]), "--input-dir", str(img.parent), "--out",
                        str(tmp_path / "s.csv"), "-q"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["ok"] > 0
