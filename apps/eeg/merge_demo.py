"""The eeg app's "merging site models" scenario for the demo (the ``merge_demo`` hook).

A base trained on public TUAB-like recordings; site A has TUAB-like recordings (250 Hz, ``-REF``
names), site B NMT-like ones (200 Hz, ``-LE`` names, gain 1.4, 9 Hz alpha); both sites' abnormality
is milder than the public one; each site fine-tunes the base with the app's own
``train(..., init=base)``, the two site runs are merged (``shared.finetune.merge``) and compared
with joint training on the pooled data.  The table and plot are the core's
(``shared.finetune.merge_demo.demo_section``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

TITLE = "EEG: normal vs abnormal"


def merge_demo(out_dir: Path, fast: bool = True) -> dict[str, Any]:
    """Base on public TUAB-like EEG; sites A (TUAB-like) and B (NMT-like) fine-tune it; merges; joint.

    Args:
        out_dir: scratch folder of the scenario (data, runs; kept between calls, reused when present).
        fast: demo size (tiny data, 8 s windows at 50 Hz, few epochs; about a minute on 2 cores).

    Returns:
        ``{"title", "sites", "metric", "rows": {model: {site: {"auroc", "balanced_accuracy"}}}, "caption",
        "seconds"}``.
    """
    from medtransfer.apps.eeg import data as D
    from medtransfer.apps.eeg import synthetic as S
    from medtransfer.apps.eeg import train as T
    from medtransfer.apps.eeg.demo import demo_config
    from medtransfer.shared.finetune.merge_demo import Steps, joint_manifest, merge_all, model_table

    out = Path(out_dir)
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    n, ne, dur = (6, 4, 42.0) if fast else (16, 8, 120.0)
    base_epochs, site_epochs = (6, 4) if fast else (15, 8)
    cfg = demo_config(fast)
    cfg["data"]["cache_dir"] = str(out / "data" / ".eeg_cache")
    dopts = {k: cfg["data"][k] for k in ("window_seconds", "crop_start_s", "crop_max_s", "sfreq")}
    data = out / "data"
    with Steps("merge demo (eeg)", 8) as bar:
        if not (data / "public" / "v3.0.1").is_dir():
            S.make_tuab(data / "public", n, ne, dur, seed=100)
        if not (data / "site_a" / "v3.0.1").is_dir():
            S.make_tuab(data / "site_a", n, ne, dur, seed=101, severity=0.4)
        if not (data / "site_b" / "Labels.csv").is_file():
            S.make_nmt(data / "site_b", n, ne, dur, seed=102, severity=0.35)
        public = D.import_tuab(data / "public", data / "public.csv", **dopts)
        csvs = {
            "site A (TUAB-like)": D.import_tuab(data / "site_a", data / "site_a.csv", **dopts),
            "site B (NMT-like)": D.import_nmt(data / "site_b", data / "site_b.csv", **dopts),
        }
        joint = joint_manifest(csvs, data / "joint.csv")
        bar.step("data")

        def train(manifest: Path, run: Path, epochs: int, init: Path | None) -> Path:
            if not (run / "checkpoints" / "best.pt").is_file():
                c = json.loads(json.dumps(cfg))
                c["train"]["epochs"] = epochs
                T.train(manifest, run, c, init=init, progress=False)
            return run

        runs = out / "runs"
        base = train(public, runs / "base", base_epochs, None)
        bar.step("base")
        site_runs = {}
        for i, (site, csv) in enumerate(csvs.items()):
            site_runs[site] = train(csv, runs / f"site_{'ab'[i]}", site_epochs, base)
            bar.step(site)
        merged = merge_all(list(site_runs.values()), base, runs)
        bar.step("merges")
        joint_run = train(joint, runs / "joint", site_epochs, base)
        bar.step("joint training")
        models = model_table("base (public data only)", base, site_runs, merged, joint_run)
        rows: dict[str, dict[str, dict[str, float]]] = {}
        for name, run in models.items():
            rows[name] = {}
            for site, csv in csvs.items():
                m = T.evaluate(run, csv, split="test", progress=False, write=False, threshold=0.5)
                rows[name][site] = {"auroc": float(m["auroc"]), "balanced_accuracy": float(m["balanced_accuracy"])}
        bar.step("evaluation")
    caption = (
        f"EEG, synthetic EDFs: ShallowFBCSPNet, {cfg['data']['window_seconds']:g} s windows at "
        f"{cfg['data']['sfreq']:g} Hz; base {base_epochs} epochs on {n} + {n} public recordings, each site and the "
        f"joint model fine-tune it for {site_epochs} epochs on {n} + {n} recordings per site; test: {ne} + {ne} "
        "recordings per site; the sites' abnormality is milder than the public one (severity 0.4 / 0.35 vs 1). "
        "Cells: recording-level AUROC / balanced accuracy at P(abnormal) 0.5 for every model. Tiny models and "
        "epochs (demo size): the numbers show the mechanism, not clinical performance."
    )
    return {
        "title": TITLE,
        "sites": list(csvs),
        "metric": "auroc",
        "rows": rows,
        "caption": caption,
        "seconds": time.time() - t0,
    }
