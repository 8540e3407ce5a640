"""``medtransfer cardiac ...``: train (--stage view|grade), add-view, evaluate, compare, phantoms.

Heavy imports inside commands.  Known errors are raised as our own errors (``InputError`` ...)
and propagate; ``main()`` prints them as one line (exit 2).  Old spellings (``train-view``,
``train-grade``, positional MANIFEST / OUT) end with one line naming the new one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import typer

from medtransfer.shared.cli.grammar import (
    MANIFEST_FLAGS,
    OLD_POSITIONAL,
    OUT_FLAGS,
    add_renamed_command,
    manifest_option,
    out_option,
    recipe_option,
    renamed,
    require,
    set_option,
)

app = typer.Typer(help="Echo view classification and quality grading (CACTUS).", no_args_is_help=True)

STAGES = ("view", "grade")
SPLITS = ("train", "val", "test")


def _print(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _manifest(path: Path) -> Path:
    """The manifest CSV argument, checked: a folder (empty or not) is named as the problem.

    Raises:
        InputError: missing path, an empty folder ("no images found (looked for ...)"), or a folder
            of echo files where a manifest CSV is expected.
    """
    from medtransfer.apps.cardiac.io import list_inputs
    from medtransfer.shared.utils.errors import InputError

    path = Path(path)
    if path.is_dir():
        n = len(list_inputs(path))  # raises "no images found (looked for ...)" on an empty folder
        raise InputError(
            path,
            f"is a folder of {n} echo file(s), not a manifest CSV; make one with "
            f"`medtransfer data import echo_folder {path} --out m.csv`",
        )
    if not path.is_file():
        raise InputError(path, "manifest not found")
    return path


@app.command("phantoms", context_settings=OLD_POSITIONAL)
def phantoms(
    ctx: typer.Context,
    out: Optional[Path] = out_option(None, help="folder to write the CACTUS-layout phantom copy into (required)"),
    n_per_view: int = typer.Option(40, help="images per view"),
    seed: int = typer.Option(0),
    sessions: int = typer.Option(10, help="acquisition groups per view"),
) -> None:
    """Write echo-like phantoms in the CACTUS layout."""
    if ctx.args:
        renamed("cardiac phantoms OUT", "cardiac phantoms -o OUT")
    from medtransfer.apps.cardiac.synthetic import make_cactus_tree

    typer.echo(str(make_cactus_tree(require(out, OUT_FLAGS), n_per_view=n_per_view, seed=seed, n_sessions=sessions)))


@app.command("train")
def train_cmd(
    manifest: Path = manifest_option(),
    out: Path = out_option(help="run folder"),
    stage: str = typer.Option(
        "view",
        "--stage",
        help="view: stage 1, view classifier | grade: stage 2, grade regression initialised from --init",
    ),
    init: Optional[Path] = typer.Option(None, "--init", help="stage-1 run folder (--stage grade)"),
    recipe: Optional[Path] = recipe_option(),
    set_: Optional[List[str]] = set_option(),
) -> None:
    """Train: --stage view (the view classifier) or --stage grade (quality 0-10 from the view model)."""
    from medtransfer.shared.utils.errors import ConfigError

    if stage not in STAGES:
        raise ConfigError(f"--stage must be view or grade (got '{stage}')")
    if stage == "view" and init is not None:
        raise ConfigError("--init is the stage-1 run for --stage grade; --stage view starts from model.pretrained")
    from medtransfer.apps.cardiac.train import train_grade, train_view

    if stage == "view":
        _print(train_view(_manifest(manifest), out, set_ or [], recipe))
    else:
        _print(train_grade(_manifest(manifest), out, init, set_ or [], recipe))


@app.command("evaluate")
def evaluate_cmd(
    run_dir: Path = typer.Argument(..., help="run folder (stage view or grade)"),
    manifest: Path = manifest_option(),
    split: str = typer.Option("test", "--split", help="train | val | test"),
) -> None:
    """Print the best checkpoint's metrics on a split as JSON (accuracy, macro-F1; MSE/MAE for grade runs),
    with the trivial baselines beside them (majority training view; mean training grade)."""
    from medtransfer.shared.utils.errors import ConfigError

    if split not in SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(SPLITS)} (got '{split}')")
    _print(_evaluate(run_dir, _manifest(manifest), split))


def _evaluate(run_dir: Path, manifest: Path, split: str) -> dict[str, Any]:
    """Metrics of a run's best checkpoint on one split, with the training code's preprocessing and metrics."""
    from medtransfer.apps.cardiac.export import load_run_model
    from medtransfer.apps.cardiac.train import _dataset, _forward, baseline_metrics, load_split, metrics_for, run_views
    from medtransfer.shared.finetune import predict_arrays

    model, cfg, info = load_run_model(run_dir)
    params = cfg["preprocessing"]
    views = run_views(cfg)
    need_grade = str(info.get("task", "view")) == "grade"
    data = load_split(manifest, split, params, need_grade, views)
    o, t = predict_arrays(model, _dataset(*data, params), _forward, batch_size=64, device="cpu")
    m: dict[str, Any] = metrics_for(views)(o, t)
    if not need_grade:
        m.pop("mse"), m.pop("mae")
    out: dict[str, Any] = {
        "run_dir": str(run_dir),
        "stage": "grade" if need_grade else "view",
        "split": split,
        "n": len(data[1]),
        **m,
    }
    trivial = info.get("trivial")
    if trivial:  # runs trained before the baseline record have none
        out["baseline"] = baseline_metrics(trivial, t["view"], t["grade"], views, need_grade)
    if info.get("baseline"):
        out["val_baseline_record"] = info["baseline"]
    return out


@app.command("add-view")
def add_view_cmd(
    manifest: Path = manifest_option(help="manifest CSV with rows of the run's views and of --view"),
    out: Path = out_option(help="new run folder"),
    init: Path = typer.Option(..., "--init", help="finished view run to extend (--stage view)"),
    view: str = typer.Option(..., "--view", help="the view class to add (e.g. PSMV)"),
    recipe: Optional[Path] = recipe_option(),
    set_: Optional[List[str]] = set_option(),
) -> None:
    """Add a view class to a trained view model by fine-tuning (old classes kept; CACTUS's PSMV step)."""
    from medtransfer.apps.cardiac.train import add_view

    _print(add_view(_manifest(manifest), init, view, out, set_ or [], recipe))


@app.command("compare", context_settings=OLD_POSITIONAL)
def compare_cmd(
    ctx: typer.Context,
    manifest: Optional[Path] = manifest_option(None, help="manifest CSV with grades (required)"),
    view_run: Path = typer.Option(..., "--view-run", help="stage-1 (view) run folder"),
    out: Path = out_option(help="comparison folder"),
    set_: Optional[List[str]] = set_option(),
) -> None:
    """Grade from the view model vs from ImageNet/scratch, equal budget; prints both."""
    if ctx.args:
        renamed("cardiac compare MANIFEST", "cardiac compare -m MANIFEST")
    from medtransfer.apps.cardiac.train import compare

    _print(compare(_manifest(require(manifest, MANIFEST_FLAGS)), view_run, out, set_ or []))


add_renamed_command(app, "train-view", "cardiac train-view", "cardiac train --stage view")
add_renamed_command(app, "train-grade", "cardiac train-grade", "cardiac train --stage grade")
