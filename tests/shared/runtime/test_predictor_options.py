"""``--opt``: every predictor declares the options it takes; unknown keys and bad values are one line
before any input is read (they were ignored, tracebacks, or nonsense answers)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from medtransfer.shared.runtime.predictor import COMMON_OPTIONS, Opt, Predictor, check_options
from medtransfer.shared.utils.errors import ConfigError


class _P(Predictor):
    options_spec = {
        "threshold": Opt("number", 0.0, 1.0),
        "batch": Opt("int", 1, 64),
        "max_patches": Opt("int", 0, None),
        "gif": Opt("flag"),
        "encoder": Opt("choice", choices=("auto", "fp32")),
        "box": Opt("box"),
    }


@pytest.mark.parametrize(
    "key,value,words",
    [
        ("threshold", "abc", "expected a finite number from 0 to 1"),
        ("threshold", -3, "from 0 to 1"),
        ("threshold", float("nan"), "finite"),
        ("batch", 2.5, "a whole number"),
        ("batch", 0, "from 1 to 64"),
        ("batch", True, "a whole number"),
        ("max_patches", -25, ">= 0"),
        ("gif", "maybe", "true or false"),
        ("encoder", "int4", "one of auto, fp32"),
        ("box", "1,2,3", "x0,y0,x1,y1"),
        ("box", "1,2,3,nan", "x0,y0,x1,y1"),
        ("thresold", 0.5, "not an option of this bundle's predictor (its options: batch, box, encoder, gif"),
    ],
)
def test_a_bad_option_is_one_line_naming_it(key, value, words):
    with pytest.raises(ConfigError) as e:
        check_options(_P, {key: value})
    msg = str(e.value)
    assert msg.startswith(f"--opt {key}") and words in msg and "\n" not in msg, msg


def test_options_come_to_the_predictor_converted_to_their_kinds():
    got = check_options(_P, {"threshold": "0", "batch": " 16 ", "gif": "OFF", "encoder": "fp32", "out_dir": "1.10"})
    assert got == {"threshold": 0.0, "batch": 16, "gif": False, "encoder": "fp32", "out_dir": "1.10"}
    assert check_options(_P, {"batch": 16.0, "gif": True, "mask": None}) == {"batch": 16, "gif": True, "mask": None}


def test_good_options_pass_as_the_cli_and_python_give_them():
    ok = {"threshold": "0", "batch": "16", "max_patches": 0, "gif": "false", "encoder": "fp32", "box": "1,2,3,4"}
    check_options(_P, ok)
    check_options(_P, {"threshold": 0.25, "batch": 16.0, "gif": True, "box": [1, 2, 3.5, 4], "mask": None})
    check_options(_P, {k: "x" for k in ("out_dir", "input_root")} | {"plot": False})
    assert set(COMMON_OPTIONS) == {"out_dir", "input_root", "plot"}


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "medtransfer.shared.cli.main", *map(str, args)], capture_output=True, text=True
    )


def test_predict_and_score_refuse_an_unknown_option_before_any_work(image_run, tmp_path):
    img = min(Path(image_run["root"]).rglob("*.png"))
    r = _cli("predict", image_run["bundle"], img, "--opt", "threshold=0.3")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: --opt threshold: not an option of this bundle's predictor (its options: none but out_dir and plot)"
    ], r.stderr
    out = tmp_path / "r.csv"
    r = _cli("score", image_run["bundle"], "-i", img.parent, "--out", out, "--opt", "plot=sometimes", "-q")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--opt plot=sometimes" in r.stderr
    assert not out.exists() or out.stat().st_size == 0  # nothing scored
    r = _cli("score", image_run["bundle"], "-i", img.parent, "--out", out, "--opt", "plot=false", "-q")
    assert r.returncode == 0 and json.loads(r.stdout.splitlines()[-1])["ok"] > 0, r.stderr[-2000:]


def test_an_edited_bundles_preprocessing_is_blamed_on_the_bundle_not_the_input(tmp_path):
    from types import SimpleNamespace

    from medtransfer.shared.runtime.predictor import check_preprocessing
    from medtransfer.shared.utils.errors import BundleError

    class W(Predictor):
        preprocessing_spec = {"feature_dim": Opt("int", 1, None), "risk_threshold": Opt("number")}

    def bundle(**pre):
        return SimpleNamespace(path=tmp_path / "b", meta={"preprocessing": pre})

    check_preprocessing(W, bundle(feature_dim=512, risk_threshold=None))
    with pytest.raises(BundleError, match=r"b/metadata.json: preprocessing.risk_threshold=high: expected a finite"):
        W(bundle(feature_dim=512, risk_threshold="high"))
    with pytest.raises(BundleError, match="preprocessing.feature_dim=lots"):
        W(bundle(feature_dim="lots"))
