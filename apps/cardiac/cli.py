"""``medtransfer cardiac ...``: phantoms, train-view, train-grade, compare (heavy imports inside commands).

Known errors are raised as our own errors (``InputError`` ...); ``main()`` prints them as one line.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(help="Echo view classification and quality grading (CACTUS).", no_args_is_help=True)


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
        raise InputError(path, f"is a folder of {n} echo file(s), not a manifest CSV; make one with "
                               f"`medtransfer data import echo_folder {path} --out m.csv`")
    if not path.is_file():
        raise InputError(path, "manifest not found")
    return path


@app.command("phantoms")
def phantoms(out: Path = typer.Argument(..., help="folder to write the CACTUS-layout phantom copy into"),
             n_per_view: int = typer.Option(40, help="images per view"),
             seed: int = typer.Option(0), sessions: int = typer.Option(10, help="acquisition groups per view")) -> None:
    """Write echo-like phantoms in the CACTUS layout."""
    from medtransfer.apps.cardiac.synthetic import make_cactus_tree

    typer.echo(str(make_cactus_tree(out, n_per_view=n_per_view, seed=seed, n_sessions=sessions)))


@app.command("train-view")
def train_view_cmd(manifest: Path, out: Path = typer.Option(..., "--out", help="run folder"),
                   set_: Optional[List[str]] = typer.Option(None, "--set", help="key=value overrides"),
                   recipe: Optional[Path] = typer.Option(None, help="YAML recipe")) -> None:
    """Stage 1: train the view classifier."""
    from medtransfer.apps.cardiac.train import train_view

    _print(train_view(_manifest(manifest), out, set_ or [], recipe))


@app.command("train-grade")
def train_grade_cmd(manifest: Path, out: Path = typer.Option(..., "--out"),
                    init: Optional[Path] = typer.Option(None, "--init", help="stage-1 run folder"),
                    set_: Optional[List[str]] = typer.Option(None, "--set"),
                    recipe: Optional[Path] = typer.Option(None)) -> None:
    """Stage 2: grade regression initialised from the view model."""
    from medtransfer.apps.cardiac.train import train_grade

    _print(train_grade(_manifest(manifest), out, init, set_ or [], recipe))


@app.command("compare")
def compare_cmd(manifest: Path, view_run: Path = typer.Option(..., "--view-run"), out: Path = typer.Option(..., "--out"),
                set_: Optional[List[str]] = typer.Option(None, "--set")) -> None:
    """Grade from the view model vs from ImageNet/scratch, equal budget; prints both."""
    from medtransfer.apps.cardiac.train import compare

    _print(compare(_manifest(manifest), view_run, out, set_ or []))
