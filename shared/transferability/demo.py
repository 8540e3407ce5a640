"""The demo's "Which source?" section: rank candidates without training, then fine-tune every one of
them (demo scale) and report Kendall's tau between each score and the fine-tuned result.

Each app declares its validation as the ``rank_demo`` hook (in ``apps/<app>/rank.py``); the ones
written, where every candidate can be trained cheaply:

* **eeg** (target: the demo's NMT-layout site): the demo's TUAB source model, an NMT-like source
  (shallow trained on a second NMT-layout site), and three random-init architectures (shallow,
  eegnet, deep4 = fine-tuning from scratch); result: test balanced accuracy after fine-tuning the
  whole network on the target's training split (same recipe as the demo's transfer sweep);
* **cardiac** (target: grading on phantoms): the view model, an ImageNet-shaped init (a timm
  resnet18 weight file from the core image task trained on shapes: the registry's weight format,
  not ImageNet itself; no ImageNet weights ship here) and scratch; result: -(test MSE) of grading;
* **wsi** (target: tcga_stad, planted bags): the source-cancer survival MILs; result: C-index of
  each source fine-tuned on the target (``pkt_compare(finetune="all")``).

videoseg: ``medtransfer rank --app videoseg`` ranks SAM2 checkpoints / runs by image-encoder
features against per-frame mask area, but its ranking is not validated against fine-tuning here.  Each app is independent: a failure becomes
one line in the section and the other apps still report.
"""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medtransfer.shared.transferability.rank import SCORES


def _table(app: str, labels: dict[str, str], res: dict[str, Any], results: dict[str, float], what: str) -> list[str]:
    """Markdown rows for one app plus its Kendall's tau line."""
    from medtransfer.shared.transferability.select import kendall_tau

    rows = {r["candidate"]: r for r in res["rows"]}
    order = list(labels)
    lines = []
    for spec in order:
        r = rows[spec]
        mark = " (random init)" if r.get("random_init") else ""
        vals = " | ".join(f"{r[s]:.3f}" for s in SCORES)
        lines.append(f"| {app} | {labels[spec]}{mark} | {vals} | {r['rank_combined']:g} | {results[spec]:.3f} |")
    fin = [results[s] for s in order]
    taus = {s: kendall_tau([rows[c][s] for c in order], fin) for s in SCORES}
    taus["combined"] = kendall_tau([-rows[c]["rank_combined"] for c in order], fin)
    tau_s = ", ".join(f"{k} {v:+.2f}" if np.isfinite(v) else f"{k} n/a" for k, v in taus.items())
    lines.append(f"| {app} | **Kendall's tau vs {what}** | {tau_s} | | | |")
    return lines


def demo_section(demo_out: Path, fast: bool, apps: Sequence[str] | None = None) -> str:
    """The "Which source?" markdown section (computed at demo scale, reusing the demo's eeg runs).

    Args:
        demo_out: the demo's output folder (``work/eeg`` is reused when present); work goes to
            ``<demo_out>/transferability/<app>``.
        fast: demo scale (small data, few epochs).
        apps: which apps' validations to run (default: every app declaring a ``rank_demo`` hook).

    Returns:
        Markdown: one table row per candidate (each score, combined rank, fine-tuned result) and a
        Kendall's tau row per app.
    """
    demo_out = Path(demo_out)
    head = [
        "## Which source? (ranking without training vs fine-tuning every candidate)",
        "",
        "`medtransfer rank` scores each candidate on the target's training split only; each candidate is then "
        "fine-tuned at demo scale. Kendall's tau (scipy) compares each score's order with the fine-tuned "
        "results (+1 = same order; few candidates and small test splits make it coarse). "
        "Regression targets: cardiac grade (standardised grade; TMI on quantile bins), "
        "wsi survival (martingale residuals). videoseg ranking (SAM2, mask area) is not validated here. "
        + (
            "Fast mode: the app demos' runs and data are reused and candidates are fine-tuned at tiny sizes "
            "(each Kendall's tau row says what was fine-tuned, at what size); `fast=False` runs the bigger validation."
            if fast
            else ""
        ),
        "",
        f"| app | candidate | {' | '.join(SCORES)} | combined rank | fine-tuned result |",
        "| --- | --- | " + " | ".join("---" for _ in SCORES) + " | --- | --- |",
    ]
    lines, notes = [], []
    summary: dict[str, Any] = {}
    from medtransfer.shared.plugins import discover_apps, load_object

    specs = {n: s for n, s in discover_apps().items() if s.rank_demo and (apps is None or n in apps)}
    for app, spec in specs.items():
        t0 = time.time()
        base = demo_out / "transferability" / app
        base.mkdir(parents=True, exist_ok=True)
        try:
            got = load_object(str(spec.rank_demo))(base=base, demo_out=demo_out, fast=fast)
            labels, res, results, what = got["labels"], got["ranking"], got["results"], got["what"]
        except Exception as e:  # noqa: BLE001 - one app failing must not hide the others
            notes.append(f"- {app}: not run ({type(e).__name__}: {' '.join(str(e).split())[:200]})")
            (base / "error.txt").write_text(traceback.format_exc())
            continue
        lines += _table(app, labels, res, results, what)
        notes.append(f"- {app}: {time.time() - t0:.0f} s; ranking: `{res['csv']}`, `{res['png']}`; result = {what}")
        summary[app] = {"results": results, "rows": res["rows"]}
    (demo_out / "transferability" / "which_source.json").write_text(json.dumps(summary, indent=1, default=str))
    return "\n".join([*head, *lines, "", *notes, ""])
