"""``medtransfer rank``: which pretrained source to fine-tune from, without training.

Imports only typer at import time; the work is in :mod:`medtransfer.shared.transferability.rank`.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    """Add the ``rank`` command to the top-level CLI."""

    @app.command("rank")
    def rank_cmd(
        app_name: str = typer.Option(
            ..., "--app", help="the app whose target is ranked (an app with a rank_features hook)"
        ),
        target: Path = typer.Option(
            ..., "--target", help="target manifest (wsi: the SurvPath labels folder, with --opt study=...)"
        ),
        candidate: List[str] = typer.Option(
            ..., "--candidate", help="registry backbone [NAME or NAME=WEIGHTS], run folder or bundle (repeatable)"
        ),
        out: Path = typer.Option(..., "--out", "-o", help="output folder (ranking.csv, ranking.png)"),
        allow_random_init: bool = typer.Option(
            False, "--allow-random-init", help="rank backbones without local weights randomly initialised (marked)"
        ),
        opt: Optional[List[str]] = typer.Option(None, "--opt", help="app option key=value (e.g. stage=grade)"),
        cache: Optional[Path] = typer.Option(
            None, "--cache", help="feature cache folder (default <out>/feature_cache)"
        ),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
    ) -> None:
        """Score each candidate on the target's labelled training split: LogME, TMI, k-NN and linear probes.

        Features are extracted once per candidate (cached by candidate and manifest sha256); writes
        OUT/ranking.csv (every score, its rank and a combined rank) and OUT/ranking.png.
        """
        from medtransfer.shared.cli.main import parse_opts
        from medtransfer.shared.transferability.rank import SCORES, rank

        res = rank(
            app_name,
            target,
            candidate,
            out,
            allow_random_init=allow_random_init,
            opts=parse_opts(opt),
            cache_dir=cache,
            progress=not quiet,
        )
        typer.echo(f"{res['task']}: rank candidate  " + "  ".join(SCORES))
        for r in sorted(res["rows"], key=lambda r: r["rank_combined"]):
            mark = " (random init)" if r.get("random_init") else ""
            vals = "  ".join(f"{r[s]:.4g}" for s in SCORES)
            typer.echo(f"{r['rank_combined']:g}  {r['candidate']}{mark}  {vals}")
        typer.echo(f"wrote {res['csv']} and {res['png']}")
