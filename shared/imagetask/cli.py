"""``medtransfer image ...``: train / evaluate a generic image classifier (synth: a tiny shapes dataset).

Known errors propagate to ``main()`` (one line, exit 2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from medtransfer.shared.cli.grammar import manifest_option, out_option, recipe_option, set_option

app = typer.Typer(help="Generic image classification on the shared core.", no_args_is_help=True)


@app.command("synth")
def synth(
    out: Path = out_option(help="folder to write <class>/<image>.png into"),
    n_per_class: int = typer.Option(40, "--n-per-class", min=1, help="images per class"),
    size: int = typer.Option(64, "--size", min=16, max=4096, help="image side in pixels (16 to 4096)"),
    seed: int = typer.Option(0, "--seed", min=0, help="random seed"),
) -> None:
    """Write noisy circle / square / triangle images (import with `medtransfer data import image-folder`)."""
    from medtransfer.shared.imagetask.data import make_shapes

    typer.echo(str(make_shapes(out, n_per_class=n_per_class, size=size, seed=seed)))


@app.command("train")
def train_cmd(
    manifest: Path = manifest_option(),
    out: Path = out_option(help="run folder"),
    recipe: Optional[Path] = recipe_option(),
    set_: Optional[List[str]] = set_option(help="override key=value (e.g. train.epochs=3)"),
) -> None:
    """Fine-tune a registry backbone; checkpoints, config and metrics go to --out."""
    from medtransfer.shared.imagetask.task import train

    typer.echo(json.dumps(train(manifest, out, recipe, set_)))


@app.command("evaluate")
def evaluate_cmd(
    run_dir: Path = typer.Argument(..., help="run folder"),
    manifest: Path = manifest_option(),
    split: str = typer.Option("test", "--split", help="train, val, test or all"),
) -> None:
    """Print JSON metrics of the best checkpoint on a split."""
    from medtransfer.shared.imagetask.task import evaluate

    typer.echo(json.dumps(evaluate(run_dir, manifest, split)))
