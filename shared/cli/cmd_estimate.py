"""``medtransfer estimate``: accuracy at a new site without labels, plus drift (torch-free).

Imports only typer at import time; the work is in :mod:`medtransfer.shared.runtime.estimate`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    """Add the ``estimate`` command to the top-level CLI."""

    @app.command("estimate")
    def estimate_cmd(
        bundle: Path = typer.Argument(..., help="bundle folder (exported with reference statistics)"),
        manifest: Optional[Path] = typer.Option(
            None, "--manifest", "-m", help="manifest CSV (path column used; labels only for a true_accuracy check)"
        ),
        input_dir: Optional[Path] = typer.Option(None, "--input-dir", "-i", help="folder of inputs"),
        out: Path = typer.Option(..., "--out", "-o", help="estimate JSON"),
        rows: Optional[Path] = typer.Option(
            None, "--rows", help="per-case rows CSV (default: <out stem>.cases.csv beside --out)"
        ),
        resume: bool = typer.Option(False, "--resume", help="skip cases already in the rows file (same bundle only)"),
        overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing rows file"),
        n_boot: int = typer.Option(300, "--bootstrap", help="bootstrap resamples for the interval"),
        opt: Optional[List[str]] = typer.Option(None, "--opt", help="predictor option key=value"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
    ) -> None:
        """Estimate accuracy (ATC, DoC) and input / confidence drift at a site without labels.

        Streams cases like `score` (one resumable row per case in a side CSV, bad cases as error
        rows) and writes --out: estimated_accuracy, estimated_balanced_accuracy, interval, n_cases,
        drift.  Segmentation and survival bundles get drift only.
        """
        from medtransfer.shared.cli.main import fail, parse_opts
        from medtransfer.shared.runtime.estimate import estimate

        if (manifest is None) == (input_dir is None):
            fail("give exactly one of --manifest or --input-dir")
        if n_boot != 0 and not 100 <= n_boot <= 100_000:  # a 95 % interval from fewer draws is not one
            fail(f"--bootstrap must be 0 (no interval) or from 100 to 100000 resamples (got {n_boot})")
        res = estimate(
            bundle,
            out,
            manifest=manifest,
            input_dir=input_dir,
            rows_csv=rows,
            resume=resume,
            overwrite=overwrite,
            progress=not quiet,
            n_boot=n_boot,
            options=parse_opts(opt, raw=True),
        )
        brief = {
            k: res.get(k)
            for k in ("kind", "n_cases", "n_errors", "estimated_accuracy", "estimated_balanced_accuracy", "interval")
        }
        if "estimate_reliable" in res:
            brief["estimate_reliable"] = res["estimate_reliable"]
        if res.get("caution"):  # what the JSON says about trusting the estimate, said here too
            brief["caution"] = res["caution"]
        if res.get("reason"):  # why there is no accuracy estimate (segmentation, survival: drift only)
            brief["reason"] = res["reason"]
        brief["drift"] = {"flag": res["drift"]["flag"], "summary": res["drift"]["summary"]}
        brief["out"] = str(out)
        typer.echo(json.dumps(brief))
