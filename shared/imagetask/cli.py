"""``medtransfer image ...``: train / evaluate a generic image classifier."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from medtransfer.shared.utils.errors import MedTransferError

app = typer.Typer(help="Generic image classification on the shared core.", no_args_is_help=True)


@app.command("train")
def train_cmd(
    manifest: Path = typer.Option(..., "--manifest", "-m", help="manifest CSV (path,label[,split,group])"),
    out: Path = typer.Option(..., "--out", "-o", help="run folder"),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="YAML recipe"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="override key=value (e.g. train.epochs=3)"),
) -> None:
    """Fine-tune a registry backbone; checkpoints, config and metrics go to --out."""
    from medtransfer.shared.imagetask.task import train

    try:
        typer.echo(json.dumps(train(manifest, out, recipe, set_)))
    except MedTransferError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)


@app.command("evaluate")
def evaluate_cmd(
    run_dir: Path = typer.Argument(..., help="run folder"),
    manifest: Path = typer.Option(..., "--manifest", "-m", help="manifest CSV"),
    split: str = typer.Option("test", help="train, val, test or all"),
) -> None:
    """Print JSON metrics of the best checkpoint on a split."""
    from medtransfer.shared.imagetask.task import evaluate

    try:
        typer.echo(json.dumps(evaluate(run_dir, manifest, split)))
    except MedTransferError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
