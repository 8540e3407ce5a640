"""``medtransfer videoseg ...``: synth, train, evaluate (heavy imports inside commands).

Datasets are imported with the core's ``medtransfer data import echonet_dynamic|trackrad2025`` and
runs exported with ``medtransfer export``.  Known errors propagate to ``main()`` (one line, exit 2);
old spellings (``videoseg import``, ``videoseg export``, ``--config``, positional OUT of ``synth``)
end with one line naming the new one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from medtransfer.shared.cli.grammar import (
    OLD_POSITIONAL,
    OUT_FLAGS,
    add_renamed_command,
    manifest_option,
    old_option,
    out_option,
    recipe_option,
    renamed,
    require,
    set_option,
)

app = typer.Typer(
    help="Video object segmentation with SAM2 + adapters (EchoNet-Dynamic, TrackRAD2025).", no_args_is_help=True
)


def _print(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


@app.command("synth", context_settings=OLD_POSITIONAL)
def synth(
    ctx: typer.Context,
    out: Optional[Path] = out_option(None, help="folder for the EchoNet-layout synthetic cines (required)"),
    n: int = typer.Option(6, help="videos"),
    frames: int = typer.Option(32, help="frames per video"),
    seed: int = typer.Option(0),
) -> None:
    """Write synthetic echo-like cines (beating ellipse LV) in the EchoNet-Dynamic layout."""
    if ctx.args:
        renamed("videoseg synth OUT", "videoseg synth -o OUT")
    from medtransfer.apps.videoseg.synthetic import make_echonet_like

    typer.echo(str(make_echonet_like(require(out, OUT_FLAGS), n_videos=n, n_frames=frames, seed=seed)))


@app.command("train")
def train_cmd(
    manifest: Path = manifest_option(help="path,label,split manifest"),
    out: Path = out_option(help="run folder"),
    recipe: Optional[Path] = recipe_option(),
    set_: Optional[List[str]] = set_option(),
    config: Optional[Path] = old_option("--config"),
) -> None:
    """Fine-tune adapters + mask decoder (encoder frozen) on a manifest."""
    if config is not None:
        renamed("videoseg train --config FILE", "videoseg train --recipe FILE")
    from medtransfer.apps.videoseg.train import make_config, train

    _print(train(manifest, out, make_config(recipe, set_ or [])))


@app.command("evaluate")
def evaluate_cmd(
    model: Path = typer.Argument(..., help="run folder (PyTorch) or bundle folder (ONNX)"),
    manifest: Path = manifest_option(),
    split: str = typer.Option("test", "--split"),
    out: Optional[Path] = out_option(None, help="folder for metrics.json (optional)"),
    backend: str = typer.Option("auto", help="auto (torch for a run folder, onnx for a bundle) | onnx | torch"),
    prompt: str = typer.Option("box", help="box | mask"),
    protocol: str = typer.Option(
        "frame", help="frame (ours: per-frame 2-D metrics, NSD 2 px) | dd_sam2 (paper: case volume, NSD 0.5)"
    ),
) -> None:
    """Dice / HD95 / NSD / ASD (first frame excluded) beside the copy-first-frame baseline."""
    from medtransfer.apps.videoseg.evaluate import evaluate

    if backend == "auto":
        backend = "torch" if (Path(model) / "run.json").is_file() else "onnx"
    res = evaluate(manifest, model, split=split, out=out, backend=backend, prompt=prompt, protocol=protocol)
    _print({k: v for k, v in res.items() if k != "cases"})


add_renamed_command(app, "import", "videoseg import DATASET ROOT --out M", "data import DATASET ROOT --out M")
add_renamed_command(app, "export", "videoseg export RUN --out B", "export RUN --out B")
