"""``medtransfer videoseg ...``: synth, import, train, evaluate, export (heavy imports inside commands)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(help="Video object segmentation with SAM2 + adapters (EchoNet-Dynamic, TrackRAD2025).", no_args_is_help=True)


def _print(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _fail(e: Exception) -> None:
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(1)


@app.command("synth")
def synth(out: Path = typer.Argument(..., help="folder for the EchoNet-layout synthetic cines"),
          n: int = typer.Option(6, help="videos"), frames: int = typer.Option(32, help="frames per video"),
          seed: int = typer.Option(0)) -> None:
    """Write synthetic echo-like cines (beating ellipse LV) in the EchoNet-Dynamic layout."""
    from medtransfer.apps.videoseg.synthetic import make_echonet_like

    typer.echo(str(make_echonet_like(out, n_videos=n, n_frames=frames, seed=seed)))


@app.command("import")
def import_cmd(dataset: str = typer.Argument(..., help="echonet_dynamic | trackrad2025"), root: Path = typer.Argument(...),
               out: Path = typer.Option(..., "--out", help="manifest CSV")) -> None:
    """Import a dataset folder into a videoseg manifest."""
    from medtransfer.apps.videoseg import data
    from medtransfer.shared.utils.errors import MedTransferError

    fns = {"echonet_dynamic": data.import_echonet, "trackrad2025": data.import_trackrad}
    if dataset not in fns:
        _fail(ValueError(f"unknown dataset '{dataset}' (choose {', '.join(fns)})"))
    try:
        typer.echo(str(fns[dataset](root, out)))
    except MedTransferError as e:
        _fail(e)


@app.command("train")
def train_cmd(manifest: Path = typer.Option(..., "--manifest", help="path,label,split manifest"),
              out: Path = typer.Option(..., "--out", help="run folder"),
              recipe: Optional[Path] = typer.Option(None, "--config", help="YAML recipe"),
              set_: Optional[List[str]] = typer.Option(None, "--set", help="key=value overrides")) -> None:
    """Fine-tune adapters + mask decoder (encoder frozen) on a manifest."""
    from medtransfer.apps.videoseg.train import resolve, train
    from medtransfer.shared.utils.errors import MedTransferError

    try:
        _print(train(manifest, out, resolve(recipe, set_ or [])))
    except MedTransferError as e:
        _fail(e)


@app.command("evaluate")
def evaluate_cmd(model: Path = typer.Argument(..., help="bundle folder (ONNX) or run folder (--backend torch)"),
                 manifest: Path = typer.Option(..., "--manifest"), split: str = typer.Option("test"),
                 out: Optional[Path] = typer.Option(None, "--out"), backend: str = typer.Option("onnx"),
                 prompt: str = typer.Option("box", help="box | mask")) -> None:
    """Dice / HD95 / NSD / ASD (first frame excluded) beside the copy-first-frame baseline."""
    from medtransfer.apps.videoseg.evaluate import evaluate
    from medtransfer.shared.utils.errors import MedTransferError

    try:
        res = evaluate(manifest, model, split=split, out=out, backend=backend, prompt=prompt)
    except MedTransferError as e:
        _fail(e)
    _print({k: v for k, v in res.items() if k != "cases"})


@app.command("export")
def export_cmd(run_dir: Path, out: Path = typer.Option(..., "--out")) -> None:
    """Export a run's video path to an ONNX bundle (same as ``medtransfer export``)."""
    from medtransfer.apps.videoseg.export import export_run

    typer.echo(str(export_run(run_dir, out)))
