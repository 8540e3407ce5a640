"""``medtransfer cardiac ...``: phantoms, train-view, train-grade, compare (heavy imports inside commands)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(help="Echo view classification and quality grading (CACTUS).", no_args_is_help=True)


def _print(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


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

    _print(train_view(manifest, out, set_ or [], recipe))


@app.command("train-grade")
def train_grade_cmd(manifest: Path, out: Path = typer.Option(..., "--out"),
                    init: Optional[Path] = typer.Option(None, "--init", help="stage-1 run folder"),
                    set_: Optional[List[str]] = typer.Option(None, "--set"),
                    recipe: Optional[Path] = typer.Option(None)) -> None:
    """Stage 2: grade regression initialised from the view model."""
    from medtransfer.apps.cardiac.train import train_grade

    _print(train_grade(manifest, out, init, set_ or [], recipe))


@app.command("compare")
def compare_cmd(manifest: Path, view_run: Path = typer.Option(..., "--view-run"), out: Path = typer.Option(..., "--out"),
                set_: Optional[List[str]] = typer.Option(None, "--set")) -> None:
    """Grade from the view model vs from ImageNet/scratch, equal budget; prints both."""
    from medtransfer.apps.cardiac.train import compare

    _print(compare(manifest, view_run, out, set_ or []))
