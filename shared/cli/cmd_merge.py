"""``medtransfer merge``: many sites, one model (TIES, task arithmetic, average).

Imports only typer at import time; the merge (torch) loads inside the command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from medtransfer.shared.cli.grammar import out_option


def register(app: typer.Typer) -> None:
    """Mount ``merge`` on the top-level ``medtransfer`` app."""
    app.command("merge")(merge)


def merge(
    runs: List[Path] = typer.Argument(..., help="run folders fine-tuned from one base (two or more)"),
    base: Optional[Path] = typer.Option(
        None, "--base", help="the base run folder or weights file the runs were fine-tuned from (optional for average)"
    ),
    method: str = typer.Option("ties", "--method", help="ties | task_arithmetic | average"),
    out: Path = out_option(help="the merged run folder to write (new or empty)"),
    trim: float = typer.Option(0.2, "--trim", help="ties: fraction of each task vector kept, by magnitude (0-1]"),
    scale: Optional[float] = typer.Option(
        None, "--scale", help="lambda on the merged task vector (default: ties 1, task_arithmetic 1/n)"
    ),
) -> None:
    """Merge runs fine-tuned at several sites from one base into one run, without their data.

    TIES trims each site's task vector (run - base) to its largest entries, elects a sign per
    parameter and averages the agreeing entries; task arithmetic adds the scaled task vectors;
    average takes the mean of the weights.  BatchNorm statistics are averaged; LoRA runs are merged
    in their dense form.  Runs of another architecture, label set or base are refused.  The merged
    run is an ordinary run folder (evaluate and export read it); it records `merged_from` and is
    not validated yet, so export asks for --force until you have evaluated it.
    """
    from medtransfer.shared.finetune.merge import METHODS, MergeError, merge_runs

    if method not in METHODS:
        raise MergeError(f"unknown merge method '{method}' (choose from {', '.join(METHODS)})")
    if method != "average" and base is None:
        raise MergeError(f"--method {method} needs --base (the run or weights the runs were fine-tuned from)")
    rec = merge_runs(runs, out, base, method=method, trim=trim, scale=scale)
    rep = rec["report"]
    typer.echo(json.dumps({"out": str(out), "method": method, "scale": rec["scale"], "trim": rec["trim"], **rep}))
