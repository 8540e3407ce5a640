"""The merge demo: site models, their merges (average, task arithmetic, TIES) and joint training, per site.

Two "sites" fine-tune one base model on their own data (which they cannot pool); the table shows
each site model, each merge of the two and a model trained on the pooled data (the upper
reference merging tries to reach without pooling), on every site's test split.

The scenarios are the apps': every installed app that declares a ``merge_demo`` hook
(``func(out_dir, fast) -> {"title", "sites", "metric", "rows", "caption", "seconds"}``, see
:mod:`medtransfer.shared.plugins`) runs its own; this module holds what they share (the merges,
the pooled manifest, progress) and the report's tables and plots.  :func:`demo_section` is what
the demo report includes.
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

#: the merges the demo compares: (row name, method, trim, scale)
MERGES: tuple[tuple[str, str, float, float | None], ...] = (
    ("merge: average", "average", 0.2, None),
    ("merge: task arithmetic (λ=1)", "task_arithmetic", 0.2, 1.0),
    ("merge: TIES (k=20%, λ=1)", "ties", 0.2, 1.0),
)


def joint_manifest(site_csvs: dict[str, Path], out_csv: Path) -> Path:
    """One manifest with every site's rows (splits kept, groups prefixed by the site).

    Args:
        site_csvs: site name -> its manifest CSV.
        out_csv: the pooled manifest to write.

    Returns:
        ``out_csv``.
    """
    from medtransfer.shared.manifest import read_manifest, write_manifest

    recs = [replace(r, group=f"{site}:{r.group}") for site, p in site_csvs.items() for r in read_manifest(p)]
    return write_manifest(recs, out_csv)


def merge_all(runs: list[Path], base: Path, out: Path) -> dict[str, Path]:
    """Every merge of :data:`MERGES` of ``runs`` into ``out/merged_<method>`` (kept when already there).

    Args:
        runs: the site runs (fine-tuned from ``base``).
        base: the base run.
        out: parent folder of the merged runs.

    Returns:
        Row name (``MERGES``) -> merged run folder.
    """
    from medtransfer.shared.finetune.merge import merge_runs

    done = {}
    for name, method, trim, scale in MERGES:
        dst = out / f"merged_{method}"
        if not (dst / "run.json").is_file():
            merge_runs(runs, dst, base, method=method, trim=trim, scale=scale)
        done[name] = dst
    return done


def model_table(
    base_name: str, base: Path, site_runs: dict[str, Path], merged: dict[str, Path], joint: Path
) -> dict[str, Path]:
    """The rows of a merge table, in report order: base, each site model, each merge, joint training.

    Returns:
        Row name -> run folder.
    """
    return {
        base_name: base,
        **{f"{s} model": r for s, r in site_runs.items()},
        **merged,
        "joint training (pooled data)": joint,
    }


class Steps:
    """A rich progress bar over a scenario's steps (``with Steps(title, n) as bar: bar.step("what")``)."""

    def __init__(self, title: str, total: int) -> None:
        from rich.progress import Progress

        self.p = Progress(transient=True)
        self.title = title
        self.task = self.p.add_task(title, total=total)

    def __enter__(self) -> "Steps":
        self.p.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.p.__exit__(*exc)

    def step(self, what: str) -> None:
        self.p.update(self.task, advance=1, description=f"{self.title}: {what}")


# --------------------------------------------------------------------------------------------- report
def _table(res: dict[str, Any]) -> list[str]:
    sites = res["sites"]
    keys = list(next(iter(next(iter(res["rows"].values())).values())))
    lines = [
        "| model | " + " | ".join(sites) + " | mean |",
        "|---|" + "---|" * (len(sites) + 1),
    ]
    for name, per in res["rows"].items():
        cells = [" / ".join(f"{per[s][k]:.2f}" for k in keys) for s in sites]
        mean = " / ".join(f"{sum(per[s][k] for s in sites) / len(sites):.2f}" for k in keys)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean} |")
    return lines


def _plot(res: dict[str, Any], png: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sites, metric = res["sites"], res["metric"]
    names = list(res["rows"])
    x = np.arange(len(names))
    w = 0.8 / len(sites)
    fig, ax = plt.subplots(figsize=(9, 3.6))
    for i, s in enumerate(sites):
        ax.bar(x + i * w - 0.4 + w / 2, [res["rows"][n][s][metric] for n in names], w, label=s)
    ax.set_xticks(x)
    ax.set_xticklabels([n.split(" (")[0] for n in names], fontsize=7, rotation=15)  # short: the table has the rest
    ax.set_ylabel(f"test {metric.replace('_', ' ')}")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def demo_section(demo_out: Path, fast: bool = True, apps: list[str] | None = None) -> str:
    """Run the merge scenario of every installed app that declares one and return the report section.

    Args:
        demo_out: the demo's output folder (``merge/<app>/`` is written inside it; plots linked relative to it).
        fast: tiny data, models and epochs (about a minute per app on 2 idle CPU cores).
        apps: which apps' scenarios to run (default: every app declaring a ``merge_demo`` hook).

    Returns:
        Markdown: per app a table (rows: base, each site model, each merge, joint training; columns:
        each site's test split and the mean) with its caption and a bar plot; an app whose scenario
        fails gets a one-line note (its traceback in ``merge/<app>/error.txt``).
    """
    from medtransfer.shared.plugins import discover_apps, load_object

    demo_out = Path(demo_out)
    out = demo_out / "merge"
    out.mkdir(parents=True, exist_ok=True)
    parts = [
        "## Merging site models: one model from many sites without pooling data",
        "",
        "Each site fine-tunes the same base model on its own data; `medtransfer merge` combines the site runs "
        "(average of weights; task arithmetic: base + λ·Σ(site − base); TIES: trim each site's update to its "
        "largest 20%, elect a sign per weight, average the agreeing updates) into an ordinary run folder. "
        "Joint training on the pooled data is the reference merging tries to reach.",
        "",
    ]
    specs = {n: s for n, s in discover_apps().items() if s.merge_demo and (apps is None or n in apps)}
    results: dict[str, Any] = {}
    for key, spec in specs.items():
        work = out / key
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        try:
            res = load_object(str(spec.merge_demo))(out_dir=work, fast=fast)
        except Exception as e:  # noqa: BLE001 - one app failing must not hide the others
            (work / "error.txt").write_text(traceback.format_exc())
            msg = " ".join(str(e).split())[:200]
            parts += [f"### {key}", "", f"not run ({type(e).__name__}: {msg}; {time.time() - t0:.0f} s)", ""]
            continue
        title = str(res.get("title") or key)
        results[key] = res
        png = _plot(res, out / f"{key}_merge.png", title)
        parts += [
            f"### {title}",
            "",
            *_table(res),
            "",
            f"{res['caption']} ({res.get('seconds', time.time() - t0):.0f} s)",
            "",
            f"![{key} merge]({png.relative_to(demo_out).as_posix()})",
            "",
        ]
    (out / "merge_demo.json").write_text(json.dumps(results, indent=2, default=str))
    return "\n".join(parts)
