"""`medtransfer bench` pieces produce real measurements (no speed assertions: numbers go to notes),
and the core bench reaches apps only through their declared hooks."""

import dataclasses
import json
import textwrap
from pathlib import Path

import pytest

from medtransfer.shared import plugins
from medtransfer.shared.bench import cold_start, default_bundle_app, onnx_vs_eager, run_bench, score_scaling
from medtransfer.shared.runtime.score import Case
from medtransfer.shared.utils.errors import MedTransferError


def test_bench_measures(image_run):
    b = Path(image_run["bundle"])
    r = onnx_vs_eager(b, batch=4, threads=1)
    assert r["onnx_items_per_s"] > 0 and r["eager_items_per_s"] > 0 and r["threads"] == 1 and r["batch"] == 4
    imgs = sorted(Path(image_run["root"]).rglob("*.png"))
    c = cold_start(b, imgs[0], repeats=1)
    assert c["predict_cold_start_s"] > 0
    s = score_scaling(b, [Case(p.name, str(p), {}) for p in imgs[:6]], workers=2)
    assert s["score_cases_per_s_1w"] > 0 and s["score_cases_per_s_2w"] > 0


def test_cold_start_of_a_failing_predict_is_one_line(image_run, tmp_path):
    """A sample the bundle cannot read: the bench says so in one line naming both, exit 2 (it was a
    traceback)."""
    import subprocess
    import sys

    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    with pytest.raises(
        MedTransferError, match=r"cold start: predict .*notes\.txt failed: .*notes\.txt: not a readable image"
    ):
        cold_start(Path(image_run["bundle"]), bad, repeats=1, uncached=False)
    p = subprocess.run([sys.executable, "-m", "medtransfer.shared.bench", "cold", str(image_run["bundle"]), str(bad),
                        "--repeats", "1"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "notes.txt" in p.stderr, p.stderr


def test_export_int8_records_metric_change(image_run, tmp_path):
    from medtransfer.shared.imagetask.task import export_run
    from medtransfer.shared.runtime.bundle import load_bundle

    out = export_run(image_run["run"], tmp_path / "q", quantize="int8", force=True)  # plumbing run: below baseline
    meta = json.loads((out / "metadata.json").read_text())
    assert set(meta["files"]) == {"model.onnx", "model.int8.onnx", "reference.json"}
    q = meta["metrics"]["int8"]
    assert abs(q["val_accuracy_change"] - (q["val_accuracy_int8"] - q["val_accuracy_fp32"])) < 1e-9
    load_bundle(out)  # both files hash-checked


@pytest.fixture
def hooks_module(tmp_path, monkeypatch):
    """An importable module of stand-in hooks that record how the core called them."""
    (tmp_path / "fake_bench_hooks.py").write_text(
        textwrap.dedent("""
        CALLS = []

        def eager(run_dir):
            from medtransfer.shared.imagetask.task import load_run
            CALLS.append(("bench_eager", str(run_dir)))
            return load_run(run_dir)[0]

        def bench(bundle=None, **_):
            CALLS.append(("bench", bundle))
            return {"own": True}
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    mod = importlib.import_module("fake_bench_hooks")
    mod.CALLS.clear()
    return mod


def _with_specs(monkeypatch, *specs):
    monkeypatch.setattr(plugins, "_discover", lambda: tuple((s.name, s) for s in specs))


def test_bench_uses_the_declared_eager_hook(image_run, monkeypatch, hooks_module):
    image = plugins.discover_apps()["image"]
    _with_specs(monkeypatch, dataclasses.replace(image, bench_eager="fake_bench_hooks:eager", bench=None))
    res = run_bench(bundle=Path(image_run["bundle"]), batch=2, threads=1)
    run_dir = json.loads((Path(image_run["bundle"]) / "metadata.json").read_text())["run_dir"]
    assert hooks_module.CALLS and set(hooks_module.CALLS) == {("bench_eager", run_dir)}
    assert res["onnx_over_eager"] > 0 and [r["batch"] for r in res["onnx_vs_eager"]] == [1, 2]


def test_bench_without_eager_hook_runs_the_apps_own_bench(image_run, monkeypatch, hooks_module):
    """No eager model declared: no name check decides, the app's bench hook gets the bundle."""
    image = plugins.discover_apps()["image"]
    _with_specs(monkeypatch, dataclasses.replace(image, bench_eager=None, bench="fake_bench_hooks:bench"))
    res = run_bench(bundle=Path(image_run["bundle"]))
    assert "onnx_over_eager" not in res and res["image_bundle_bench"] == {"own": True}
    assert hooks_module.CALLS == [("bench", str(image_run["bundle"]))]


def test_bench_reports_a_missing_run_folder(image_run, monkeypatch, hooks_module, tmp_path):
    import shutil

    b = tmp_path / "moved"
    shutil.copytree(image_run["bundle"], b)
    meta = json.loads((b / "metadata.json").read_text())
    meta["run_dir"] = str(tmp_path / "gone")
    (b / "metadata.json").write_text(json.dumps(meta))
    from medtransfer.shared.export.bundle_writer import write_checksums

    # resealed, as a re-export with the run folder gone would leave it (the bench checks bundles as predict does)
    write_checksums(b, list(meta["files"]))
    image = plugins.discover_apps()["image"]
    _with_specs(monkeypatch, dataclasses.replace(image, bench_eager="fake_bench_hooks:eager", bench=None))
    res = run_bench(bundle=b)
    assert "run folder" in res["onnx_vs_eager_error"] and not hooks_module.CALLS


def test_default_bench_bundle_comes_from_a_declared_hook(monkeypatch):
    a = plugins.AppSpec(name="a", help="")
    b = plugins.AppSpec(name="b", help="", bench_bundle="x:y")
    c = plugins.AppSpec(name="c", help="", bench_bundle="x:z")
    _with_specs(monkeypatch, a, b, c)
    assert default_bundle_app() == "b" and default_bundle_app("c") == "c" and default_bundle_app("a") == "b"
    _with_specs(monkeypatch, a)
    with pytest.raises(MedTransferError, match="--bundle"):
        default_bundle_app()


def test_bench_refuses_what_is_not_a_bundle_in_one_line(tmp_path, capsys):
    """The bench read metadata.json as it found it: a missing folder gave Python's 'No such file or
    directory', metadata without its schema a KeyError.  It now opens the bundle as predict does."""
    from cliutil import run_main

    assert run_main(["bench", "--bundle", tmp_path / "nope"], capsys)[2].strip() == (
        f"error: {tmp_path / 'nope'}: not a bundle (no metadata.json)"
    )
    (tmp_path / "metadata.json").write_text("{}")
    code, _, err = run_main(["bench", "--bundle", tmp_path], capsys)
    assert code != 0 and err.strip() == f"error: {tmp_path / 'metadata.json'}: field 'schema' is missing"
    with pytest.raises(MedTransferError, match="field 'schema' is missing"):
        onnx_vs_eager(tmp_path)
