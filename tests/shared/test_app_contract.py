"""The app contract, checked for every app ``discover_apps()`` finds (the core's image task too).

* every declared hook resolves and accepts the parameters ``plugins.HOOKS`` documents;
* every importer is described by one of the app's data cards, and every card exists;
* every app comes from a ``medtransfer.apps`` entry point, and the core (shared/ outside the image
  task's own package) names no app: no import of one, no comparison with an app's name;
* ``medtransfer export RUN --out <relative path>`` works for every app, on a tiny run;
* every app's training starts from the same weights whatever the process drew before it (it seeds
  before it builds the model), and its model spec names no folder of the machine it ran on;
* demo selection and declared backbones go through the specs alone.
"""

from __future__ import annotations

import ast
import json
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from medtransfer.shared import plugins
from medtransfer.shared.plugins import AppSpec, discover_apps, load_object

REPO = Path(__file__).resolve().parents[2]
APPS = discover_apps()


def test_every_app_is_an_entry_point_and_the_image_task_is_one_of_them():
    eps = {ep.name for ep in entry_points(group="medtransfer.apps")}
    assert set(APPS) == eps
    assert "image" in APPS and APPS["image"].demo_default is False
    assert all(s.demo_default for n, s in APPS.items() if n != "image")


@pytest.mark.parametrize("name", sorted(APPS))
def test_hooks_resolve_and_match_the_spec(name):
    from medtransfer.shared.runtime.predictor import Predictor

    spec = APPS[name]
    assert spec.name == name
    assert plugins.hook_problems(spec) == []
    for required in ("cli", "predictor", "exporter", "demo"):
        assert getattr(spec, required), f"{name} declares no {required}"
    assert issubclass(load_object(spec.predictor), Predictor)
    import typer

    assert isinstance(load_object(spec.cli), typer.Typer)


def test_hook_problems_catches_a_broken_spec():
    """The checker itself can fail: a wrong reference and a wrong signature are both reported."""
    bad = AppSpec(
        name="bad",
        help="",
        exporter="medtransfer.shared.plugins:no_such_thing",
        demo="medtransfer.shared.plugins:get_app",
        importers={"x": "medtransfer.shared.plugins:hook"},
        backbones={"b": {"builder": "medtransfer.shared.plugins:load_object", "colour": "red"}},
    )
    problems = "\n".join(plugins.hook_problems(bad))
    assert "exporter" in problems and "does not resolve" in problems
    assert "demo" in problems and "(out_dir, fast)" in problems
    assert "importer 'x'" in problems and "(root, out_csv)" in problems
    assert "unknown keys ['colour']" in problems


@pytest.mark.parametrize("name", sorted(APPS))
def test_every_importer_has_a_data_card(name):
    spec = APPS[name]
    cards = {c: (REPO / "data_cards" / c) for c in spec.data_cards}
    missing = [c for c, p in cards.items() if not p.is_file()]
    assert not missing, f"{name}: data cards not in data_cards/: {missing}"
    text = {c: p.read_text(encoding="utf-8") for c, p in cards.items()}
    for imp in spec.importers:
        assert any(f"data import {imp}" in t for t in text.values()), (
            f"{name}: importer '{imp}' is described by none of its cards {sorted(cards)}"
        )


def _core_files() -> list[Path]:
    own = APPS["image"].cli.split(":")[0].rsplit(".", 1)[0]  # medtransfer.shared.imagetask
    pkg = REPO / "shared" / Path(*own.split(".")[2:])
    return [f for f in (REPO / "shared").rglob("*.py") if pkg not in f.parents]


def test_the_core_names_no_app():
    names = set(APPS)
    app_pkgs = ("medtransfer.apps",) + tuple({s.cli.split(":")[0].rsplit(".", 1)[0] for s in APPS.values() if s.cli})
    found = []
    for f in _core_files():
        tree = ast.parse(f.read_text(encoding="utf-8"))
        for n in ast.walk(tree):
            mods = (
                [a.name for a in n.names]
                if isinstance(n, ast.Import)
                else [n.module or ""]
                if isinstance(n, ast.ImportFrom)
                else []
            )
            found += [f"{f.name}:{n.lineno} imports {m}" for m in mods if m.startswith(app_pkgs)]
            if isinstance(n, ast.Compare):
                found += [
                    f"{f.name}:{n.lineno} compares with '{c.value}'"
                    for c in (n.left, *n.comparators)
                    if isinstance(c, ast.Constant) and c.value in names
                ]
            if (
                isinstance(n, ast.Constant)
                and isinstance(n.value, str)
                and n.value.startswith(tuple(p + "." for p in app_pkgs))
            ):
                found += [f"{f.name}:{n.lineno} refers to {n.value}"]
    assert not found, found


#: core files whose code strings equal an app's name for another reason, reported (issue 14): modality keys
#: "eeg" / "wsi" of the audit perturbations and of the estimate shifts (and the drift bench reusing them),
#: which happen to be app names too
APP_NAME_STRINGS_KNOWN = ("runtime/perturb.py", "runtime/estimate_shift.py", "runtime/drift_check.py")


def _app_name_strings(source: str, names: set[str]) -> list[tuple[int, str]]:
    """(line, value) of every string in the code (docstrings left out) that is exactly an app's name."""
    tree = ast.parse(source)
    docs = set()
    for n in ast.walk(tree):
        body = getattr(n, "body", None)
        if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body:
            first = body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docs.add(id(first.value))
    return [
        (n.lineno, n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs and n.value in names
    ]


def test_the_core_code_holds_no_app_name_string():
    # apps outside the core (the image task is the core's own); prose (docstrings, messages) may say "EEG"
    names = {n for n, s in APPS.items() if not (s.cli or "").startswith("medtransfer.shared.")}
    demo = 'def f(app):\n    """Runs the eeg part."""\n    return run("eeg") if app else "EEG data"\n'
    assert _app_name_strings(demo, {"eeg"}) == [(3, "eeg")]  # the checker itself can fail
    found = [
        f"{f.relative_to(REPO / 'shared').as_posix()}:{line} has the string '{value}'"
        for f in _core_files()
        if f.relative_to(REPO / "shared").as_posix() not in APP_NAME_STRINGS_KNOWN
        for line, value in _app_name_strings(f.read_text(encoding="utf-8"), names)
    ]
    assert not found, found


def test_demo_selection_is_declared_not_named(monkeypatch):
    from medtransfer.shared.demo import select_demos
    from medtransfer.shared.utils.errors import MedTransferError

    core = AppSpec(name="zzz", help="", demo="m:f", demo_default=False)
    app = AppSpec(name="aaa", help="", demo="m:f")
    nodemo = AppSpec(name="bbb", help="")
    monkeypatch.setattr(plugins, "_discover", lambda: (("aaa", app), ("bbb", nodemo), ("zzz", core)))
    assert list(select_demos()) == ["aaa"]
    assert list(select_demos(["zzz"])) == ["zzz"]
    with pytest.raises(MedTransferError, match="bbb"):
        select_demos(["bbb"])
    monkeypatch.setattr(plugins, "_discover", lambda: (("bbb", nodemo), ("zzz", core)))
    assert list(select_demos()) == ["zzz"]  # stands in when no default app is installed


def test_demo_runs_hooks_then_writes_one_report(tmp_path, monkeypatch):
    """A failing app's demo is reported without stopping the others; links point into work/<app>/."""
    import textwrap

    from medtransfer.shared.demo import run_demo
    from medtransfer.shared.utils.errors import MedTransferError

    (tmp_path / "fake_demo_hooks.py").write_text(
        textwrap.dedent("""
        from pathlib import Path

        def good(out_dir, fast=True):
            b = Path(out_dir) / "bundle"
            b.mkdir(parents=True)
            (b / "metadata.json").write_text("{}")
            return {"markdown": "![plot](p.png) [site](https://x.org)", "bundle": str(b), "metrics": {"fast": fast}}

        def bad(out_dir, fast=True):
            raise ValueError("no\\nluck")
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    specs = (
        ("bad", AppSpec(name="bad", help="", demo="fake_demo_hooks:bad")),
        ("good", AppSpec(name="good", help="", demo="fake_demo_hooks:good")),
    )
    monkeypatch.setattr(plugins, "_discover", lambda: specs)
    out = tmp_path / "out"
    with pytest.raises(MedTransferError, match="demo failed for bad"):
        run_demo(out, fast=True)
    report = (out / "report.md").read_text()
    assert "## bad\n\n**FAILED**: `ValueError: no luck`" in report
    assert "](work/good/p.png)" in report and "](https://x.org)" in report
    assert (out / "bundles" / "good" / "metadata.json").is_file() and (out / "bad_error.txt").is_file()
    assert json.loads((out / "summary.json").read_text())["good"]["metrics"] == {"fast": True}


def test_declared_backbones_are_listed_without_importing_the_app():
    """`medtransfer models` lists uni2h (declared by the wsi plugin) in a fresh process that never
    imports the wsi model module."""
    import subprocess

    declared = {n for s in APPS.values() for n in s.backbones}
    assert "uni2h" in declared
    code = (
        "import sys; from medtransfer.shared.registry import list_models, get_entry; "
        "names = list_models(); e = get_entry('uni2h'); "
        "print(names.count('uni2h'), e.family, e.pretrained_cfg['filename'], "
        "'medtransfer.apps.wsi.model' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.split() == ["1", "timm", "uni2h_pytorch_model.bin", "False"]


# ------------------------------------------------------------------------------ export, relative --out
def _image_run(work: Path) -> Path:
    from medtransfer.shared.imagetask.data import import_image_folder, make_shapes
    from medtransfer.shared.imagetask.task import train

    man = import_image_folder(make_shapes(work / "shapes", n_per_class=8, size=32), work / "m.csv")
    train(man, work / "run", overrides=["train.epochs=1", "train.progress=false", "data.size=32"])
    return work / "run"


def _cardiac_run(work: Path) -> Path:
    from medtransfer.apps.cardiac.data import import_cactus
    from medtransfer.apps.cardiac.synthetic import make_cactus_tree
    from medtransfer.apps.cardiac.train import train_view

    root = make_cactus_tree(work / "cactus", n_per_view=8, n_sessions=4, size=(96, 128), seed=1)
    train_view(
        import_cactus(root, work / "m.csv"),
        work / "run",
        ["preprocessing.size=32", "train.epochs=1", "train.batch_size=16", "train.progress=false"],
    )
    return work / "run"


def _eeg_run(work: Path) -> Path:
    from medtransfer.apps.eeg import synthetic as S
    from medtransfer.apps.eeg.data import import_tuab
    from medtransfer.apps.eeg.train import make_config, train

    small = {"window_seconds": 4.0, "crop_start_s": 4.0, "crop_max_s": 0.0, "sfreq": 50.0}
    root = S.make_tuab(work / "tuab", n_per_class=3, eval_per_class=2, duration_s=16.0, seed=0)
    cfg = make_config(
        overrides={
            "data": {**small, "cache_dir": str(work / "cache")},
            "model": {"name": "shallow"},
            "train": {"epochs": 1, "batch_size": 32, "patience": 0, "progress": False},
        }
    )
    train(import_tuab(root, work / "m.csv", **small), work / "run", cfg, progress=False)
    return work / "run"


def _videoseg_run(work: Path) -> Path:
    from medtransfer.apps.videoseg.data import import_echonet
    from medtransfer.apps.videoseg.model import MICRO_OVERRIDES
    from medtransfer.apps.videoseg.synthetic import make_echonet_like
    from medtransfer.apps.videoseg.train import make_config, train

    root = make_echonet_like(work / "EchoNet", n_videos=3, n_frames=8, splits=("TRAIN", "VAL", "TEST"))
    cfg = make_config(
        overrides=[
            "model.image_size=128",
            f"model.overrides={json.dumps(MICRO_OVERRIDES)}",
            "model.adapter_blocks=2",
            "train.epochs=1",
            "data.clip_len=3",
            "train.progress=false",
        ]
    )
    return Path(train(import_echonet(root, work / "m.csv"), work / "run", cfg)["run_dir"])


def _wsi_run(work: Path) -> Path:
    from medtransfer.apps.wsi.labels import find_studies, read_table
    from medtransfer.apps.wsi.synthetic import make_survpath_tables, planted_bags
    from medtransfer.apps.wsi.train import make_config, train_run

    root = make_survpath_tables(work / "labels", studies=("tcga_aaa",), n_cases=30)
    cases = read_table(find_studies(root)["tcga_aaa"], "dss")[0]
    cfg = make_config(overrides=["train.epochs=1", "min_steps=0", "model.hidden=16", "model.attn_dim=8"])
    train_run(root, "tcga_aaa", work / "run", cfg, bags=planted_bags(cases, dim=16, seed=0, n_patches=(4, 8)), fold=0)
    return work / "run"


#: app -> a tiny run of it (a new app adds one here: the contract covers every installed app)
TINY_RUNS = {"image": _image_run, "cardiac": _cardiac_run, "eeg": _eeg_run, "videoseg": _videoseg_run, "wsi": _wsi_run}


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """``medtransfer ARGS`` in this process: (exit code, stdout, stderr)."""
    from medtransfer.shared.cli import main as cli

    monkeypatch.setattr(sys, "argv", ["medtransfer", *args])
    with pytest.raises(SystemExit) as e:
        cli.main()
    out = capsys.readouterr()
    return int(e.value.code or 0), out.out, out.err


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(APPS))
def test_export_to_a_relative_out(name, tmp_path, monkeypatch, capsys):
    if name not in TINY_RUNS:
        pytest.fail(f"app '{name}' has no tiny run in TINY_RUNS: the export contract cannot be checked")
    run = TINY_RUNS[name](tmp_path / "work")
    monkeypatch.chdir(tmp_path)
    # --force: a one-epoch run may not beat its trivial baseline; what is checked here is the export path
    code, out, err = _cli(monkeypatch, capsys, "export", str(run), "--out", "bundles/b", "--force")
    assert code == 0, err
    bundle = tmp_path / "bundles" / "b"
    assert json.loads((bundle / "metadata.json").read_text())["app"] == name
    assert not [p.name for p in (tmp_path / "bundles").iterdir() if p.name != "b"]  # no staging left behind
    code, out, err = _cli(monkeypatch, capsys, "verify", "bundles/b")
    assert code == 0, err


class _Started(Exception):
    """Raised by the patched engine right after ``fit`` recorded the run's start."""


@pytest.mark.parametrize("name", sorted(APPS))
def test_training_starts_from_the_seeds_weights_whatever_ran_before(name, tmp_path, monkeypatch):
    import random

    import numpy as np
    import torch

    from medtransfer.shared.finetune import engine

    if name not in TINY_RUNS:
        pytest.fail(f"app '{name}' has no tiny run in TINY_RUNS: its seeding cannot be checked")

    def stop(*a, **k):  # fit has written run.json (initial_weights_sha256): the training itself is not needed
        raise _Started

    monkeypatch.setattr(engine, "setup_strategy", stop)
    digests = []
    for k, draws in enumerate((0, 1000)):
        torch.rand(draws), np.random.rand(draws), [random.random() for _ in range(draws)]
        with pytest.raises(_Started):
            TINY_RUNS[name](tmp_path / f"w{k}")
        (info,) = [json.loads(p.read_text()) for p in (tmp_path / f"w{k}").rglob("run.json")]
        digests.append(info["initial_weights_sha256"])
        # the model spec says what the model is, not where it ran: runs of one architecture trained on
        # other machines (cache folders, workers) stay comparable (``medtransfer merge`` compares specs)
        assert str(tmp_path) not in json.dumps(info.get("model_spec")), info["model_spec"]
    assert digests[0] == digests[1]
