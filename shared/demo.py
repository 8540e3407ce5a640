"""``medtransfer demo``: every installed app end to end on generated data -> report.md + bundles/."""
from __future__ import annotations

import json
import shutil
import time
import traceback
from pathlib import Path
from typing import Any

from medtransfer.shared.plugins import discover_apps, load_object
from medtransfer.shared.utils.errors import MedTransferError


def run_demo(out: str | Path, apps: list[str] | None = None, fast: bool = True) -> Path:
    """Run each app's demo hook; a failing app is reported (and makes the command fail) without
    stopping the others.

    Args:
        out: output folder.
        apps: app names (default: every app with a demo; the core image task only when no app is installed).
        fast: the quick default sizes.

    Returns:
        Path of ``report.md``.

    Raises:
        MedTransferError: if any app's demo failed (after writing the report).
    """
    from rich.console import Console

    console = Console(stderr=True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    specs = {n: s for n, s in discover_apps().items() if s.demo}
    if not apps and len(specs) > 1:
        # the core's own image task stands in only until an app has landed: `--apps image` runs it
        specs.pop("image", None)
    if apps:
        unknown = [a for a in apps if a not in specs]
        if unknown:
            raise MedTransferError(f"no demo for: {', '.join(unknown)} (have: {', '.join(specs)})")
        specs = {n: specs[n] for n in apps}
    sections, failed, summary = [], [], {}
    t_all = time.time()
    for name, spec in specs.items():
        console.rule(f"demo: {name}")
        t0 = time.time()
        work = out / "work" / name
        try:
            res: dict[str, Any] = load_object(spec.demo)(work, fast=fast)
            secs = time.time() - t0
            bundle_dst = out / "bundles" / name
            if res.get("bundle"):
                if bundle_dst.exists():
                    shutil.rmtree(bundle_dst)
                shutil.copytree(res["bundle"], bundle_dst)
            md = res.get("markdown", "")
            sections.append(f"## {name}\n\n_{secs:.0f} s; bundle: `bundles/{name}/`_\n\n" + _relink(md, f"work/{name}/"))
            summary[name] = {"seconds": round(secs, 1), "metrics": res.get("metrics", {})}
            console.print(f"[green]{name}: done in {secs:.0f} s")
        except Exception as e:  # noqa: BLE001
            failed.append(name)
            msg = " ".join(str(e).split())
            sections.append(f"## {name}\n\n**FAILED**: `{type(e).__name__}: {msg}`\n")
            (out / f"{name}_error.txt").write_text(traceback.format_exc())
            console.print(f"[red]{name}: failed: {msg}")
    head = ["# medtransfer demo report", "",
            f"Generated {time.strftime('%Y-%m-%d %H:%M')} in {time.time() - t_all:.0f} s "
            f"({'quick' if fast else 'full'} sizes). Apps: {', '.join(specs)}.", ""]
    report = out / "report.md"
    report.write_text("\n".join(head + sections) + "\n", encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if failed:
        raise MedTransferError(f"demo failed for {', '.join(failed)} (see {report})")
    return report


def _relink(md: str, prefix: str) -> str:
    """Make relative links of an app section point into its work folder."""
    import re

    return re.sub(r"\]\((?!https?:|/|#)([^)]+)\)", lambda m: f"]({prefix}{m.group(1)})", md)
