"""``medtransfer demo``: every installed app end to end on generated data -> report.md + bundles/.

Running (:func:`run_app_demo`, one app's ``demo`` hook) is kept apart from writing the report
(:func:`write_report`); the core names no app: which apps run by default is each spec's
``demo_default``.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtransfer.shared.plugins import AppSpec, discover_apps, load_object
from medtransfer.shared.utils.errors import MedTransferError


@dataclass
class DemoResult:
    """What one app's demo gave (or how it failed)."""

    name: str
    seconds: float
    markdown: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def app_section(out_dir: str | Path, res: dict[str, Any], markdown: str, metrics_file: str) -> dict[str, Any]:
    """What an app's ``demo`` hook returns, once ``res["metrics"]`` is written to ``out_dir/metrics_file``.

    Args:
        out_dir: the app's demo folder.
        res: the app's run result (``metrics``, ``bundle``).
        markdown: its report section.
        metrics_file: file name for the metrics JSON.

    Returns:
        ``{"markdown", "bundle", "metrics"}``.
    """
    (Path(out_dir) / metrics_file).write_text(json.dumps(res["metrics"], indent=2, default=_plain))
    return {"markdown": markdown, "bundle": str(res["bundle"]), "metrics": res["metrics"]}


def _plain(x: Any) -> Any:
    """JSON fallback: numbers (numpy scalars included) as float, anything else as text."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return str(x)


def select_demos(apps: list[str] | None = None) -> dict[str, AppSpec]:
    """The specs ``medtransfer demo`` runs.

    Args:
        apps: app names; default: every app with a demo whose spec has ``demo_default``, or,
            when there is none, every app with a demo.

    Raises:
        MedTransferError: a named app has no demo.
    """
    specs = {n: s for n, s in discover_apps().items() if s.demo}
    if apps:
        unknown = [a for a in apps if a not in specs]
        if unknown:
            raise MedTransferError(f"no demo for: {', '.join(unknown)} (have: {', '.join(specs)})")
        return {n: specs[n] for n in apps}
    default = {n: s for n, s in specs.items() if s.demo_default}
    return default or specs


def run_app_demo(spec: AppSpec, out: Path, fast: bool) -> DemoResult:
    """Run one app's demo hook in ``out/work/<app>``; copy its bundle to ``out/bundles/<app>``.

    A failure is caught and returned (its traceback goes to ``out/<app>_error.txt``) so the other
    apps still run.
    """
    t0 = time.time()
    try:
        res: dict[str, Any] = load_object(spec.demo)(out / "work" / spec.name, fast=fast)
        if res.get("bundle"):
            dst = out / "bundles" / spec.name
            if dst.exists():
                shutil.rmtree(dst)
            shutil.copytree(res["bundle"], dst)
        return DemoResult(spec.name, time.time() - t0, res.get("markdown", ""), res.get("metrics", {}))
    except Exception as e:  # noqa: BLE001 - reported in the report, the other apps go on
        (out / f"{spec.name}_error.txt").write_text(traceback.format_exc())
        return DemoResult(spec.name, time.time() - t0, error=f"{type(e).__name__}: {' '.join(str(e).split())}")


# The suite's cross-app tools add their own report sections once every app's demo has run; each
# ``func(demo_out: Path, fast: bool) -> str`` reads the finished demo folder (bundles/, work/<app>/).
TOOL_SECTIONS: tuple[tuple[str, str], ...] = (
    ("Which source? (rank)", "medtransfer.shared.transferability.demo:demo_section"),
    ("New site without labels (estimate)", "medtransfer.shared.runtime.estimate_shift:demo_section"),
    ("Many sites, one model (merge)", "medtransfer.shared.finetune.merge_demo:demo_section"),
    ("Robustness audit (audit)", "medtransfer.shared.runtime.audit:demo_section"),
)


def run_tool_section(title: str, target: str, out: Path, fast: bool) -> DemoResult:
    """Run one tool's report section over the finished demo folder; a failure is caught and returned."""
    t0 = time.time()
    try:
        md = load_object(target)(out, fast=fast)
        return DemoResult(title, time.time() - t0, md or "")
    except Exception as e:  # noqa: BLE001 - reported in the report, the other sections go on
        slug = re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_")
        (out / f"{slug}_error.txt").write_text(traceback.format_exc())
        return DemoResult(title, time.time() - t0, error=f"{type(e).__name__}: {' '.join(str(e).split())}")


def write_report(
    out: Path, results: list[DemoResult], fast: bool, seconds: float, tools: list[DemoResult] | None = None
) -> Path:
    """Write ``report.md`` (one section per app, links into its work folder) and ``summary.json``.

    Returns:
        Path of ``report.md``.
    """
    lines = [
        "# medtransfer demo report",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M')} in {seconds:.0f} s ({'quick' if fast else 'full'} sizes). "
        f"Apps: {', '.join(r.name for r in results)}.",
        "",
    ]
    for r in results:
        if r.error:
            lines.append(f"## {r.name}\n\n**FAILED**: `{r.error}`\n")
        else:
            lines.append(
                f"## {r.name}\n\n_{r.seconds:.0f} s; bundle: `bundles/{r.name}/`_\n\n"
                + _relink(r.markdown, f"work/{r.name}/")
            )
    for r in tools or []:
        if r.error:
            lines.append(f"## {r.name}\n\n**FAILED**: `{r.error}`\n")
        else:
            lines.append(f"## {r.name}\n\n_{r.seconds:.0f} s_\n\n{r.markdown}\n")
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = {r.name: {"seconds": round(r.seconds, 1), "metrics": r.metrics} for r in results if not r.error}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return report


def run_demo(out: str | Path, apps: list[str] | None = None, fast: bool = True, tools_on: bool = True) -> Path:
    """Run each selected app's demo; a failing app is reported (and makes the command fail)
    without stopping the others.

    Args:
        out: output folder.
        apps: app names (default: see :func:`select_demos`).
        fast: the quick default sizes.
        tools_on: after the apps, run the cross-app tool sections (:data:`TOOL_SECTIONS`).

    Returns:
        Path of ``report.md``.

    Raises:
        MedTransferError: if any app's demo or tool section failed (after writing the report).
    """
    from rich.console import Console

    console = Console(stderr=True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    results = []
    for spec in select_demos(apps).values():
        console.rule(f"demo: {spec.name}")
        r = run_app_demo(spec, out, fast)
        console.print(f"[red]{r.name}: failed: {r.error}" if r.error else f"[green]{r.name}: done in {r.seconds:.0f} s")
        results.append(r)
    tools = []
    if tools_on and not any(r.error for r in results):
        for title, target in TOOL_SECTIONS:
            console.rule(f"demo: {title}")
            r = run_tool_section(title, target, out, fast)
            console.print(
                f"[red]{r.name}: failed: {r.error}" if r.error else f"[green]{r.name}: done in {r.seconds:.0f} s"
            )
            tools.append(r)
    report = write_report(out, results, fast, time.time() - t0, tools)
    failed = [r.name for r in results + tools if r.error]
    if failed:
        raise MedTransferError(f"demo failed for {', '.join(failed)} (see {report})")
    return report


def _relink(md: str, prefix: str) -> str:
    """Make relative links of an app section point into its work folder."""
    return re.sub(r"\]\((?!https?:|/|#)([^)]+)\)", lambda m: f"]({prefix}{m.group(1)})", md)
