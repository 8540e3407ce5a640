"""``medtransfer audit``: how a bundle degrades under acquisition perturbations and how easily it is fooled.

Imports only typer at import time; the audit (torch-free; torch only with ``--run``) loads inside
the command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from medtransfer.shared.cli.grammar import manifest_option, out_option


def register(app: typer.Typer) -> None:
    """Mount ``audit`` on the top-level ``medtransfer`` app."""
    app.command("audit")(audit)


def _opts(pairs: Optional[List[str]]) -> dict[str, str]:
    from medtransfer.shared.utils.errors import InputError

    out: dict[str, str] = {}
    for kv in pairs or []:
        if "=" not in kv:
            raise InputError("--opt", f"'{kv}' is not key=value")
        k, v = kv.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def audit(
    bundle: Path = typer.Argument(..., help="the exported bundle folder"),
    manifest: Path = manifest_option(help="labelled manifest CSV (path,label[,split,group]; survival: time,event)"),
    out: Path = out_option(help="output folder for audit.json, audit.md, audit_cases.csv and plots"),
    perturb: Optional[List[str]] = typer.Option(
        None, "--perturb", help="only these perturbations (name or modality/name; repeatable); default all that fit"
    ),
    severities: Optional[int] = typer.Option(
        None, "--severities", min=2, help="severities per perturbation, 0 included (default: the whole ladder)"
    ),
    max_cases: int = typer.Option(0, "--max-cases", min=0, help="audit at most this many cases (0 = all)"),
    split: Optional[str] = typer.Option(None, "--split", help="only manifest rows of this split (e.g. test)"),
    seed: int = typer.Option(0, "--seed", min=0, help="random seed of the perturbations"),
    run: Optional[Path] = typer.Option(
        None, "--run", help="also attack this run's model (FGSM / PGD; needs torch, the [train] extra)"
    ),
    epsilon: Optional[List[float]] = typer.Option(
        None, "--epsilon", help="adversarial budget in input units (µV, 0-255 intensity; repeatable)"
    ),
    pgd_steps: int = typer.Option(10, "--pgd-steps", min=1, help="PGD iterations per budget (with --run)"),
    opt: Optional[List[str]] = typer.Option(None, "--opt", help="predictor option key=value (repeatable)"),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="no progress bar"),
) -> None:
    """Answer each labelled case plainly and under each acquisition perturbation (EEG noise, line noise,
    gain, electrode loss, time shift, re-referencing; echo speckle, gain, blur, depth, rotation; stain,
    blur, JPEG; feature noise, tile loss; video frame drops and noise) at increasing severities, and
    report the task metric, calibration (ECE, reliability plot), the share of answers that change and
    the share refused.  Torch-free on the ONNX bundle; `--run` adds FGSM / PGD on the run's model.
    """
    from medtransfer.shared.runtime.audit import _finite, run_audit

    rep = run_audit(
        bundle,
        manifest,
        out,
        perturbations=perturb or None,
        severities=severities,
        max_cases=max_cases,
        split=split,
        seed=seed,
        options=_opts(opt),
        run_dir=run,
        epsilons=epsilon or None,
        pgd_steps=pgd_steps,
        progress=not quiet,
    )
    summary = {
        "out": str(out),
        "cases": rep["n_cases"],
        "errors": rep["n_error"],
        rep["metric_name"]: rep["severity0"].get("metric"),
        "ece": rep["severity0"].get("ece"),
        "perturbations": len({r["perturbation"] for r in rep["results"]}),
    }
    typer.echo(json.dumps(_finite(summary)))  # valid JSON: no bare NaN
