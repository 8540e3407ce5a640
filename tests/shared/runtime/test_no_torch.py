"""The runtime path (predict, score, bundle) never imports torch."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path


def test_predict_and_score_leave_torch_unimported(image_run, tmp_path):
    img = sorted(Path(image_run["root"]).rglob("*.png"))[0]
    code = textwrap.dedent(f"""
        import sys, json
        from typer.testing import CliRunner
        from medtransfer.shared.cli.main import app
        r = CliRunner().invoke(app, ["predict", r"{image_run["bundle"]}", r"{img}"])
        assert r.exit_code == 0, r.output
        r2 = CliRunner().invoke(app, ["score", r"{image_run["bundle"]}", "--input-dir", r"{img.parent}",
                                      "--out", r"{tmp_path / "s.csv"}", "-q"])
        assert r2.exit_code == 0, r2.output
        print(json.dumps({{"torch": "torch" in sys.modules, "label": json.loads(r.output.splitlines()[0])["label"]}}))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["torch"] is False
    assert res["label"] in ("circle", "square", "triangle")
