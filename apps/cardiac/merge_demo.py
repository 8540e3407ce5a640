"""The cardiac app's "merging site models" scenario for the demo (the ``merge_demo`` hook).

A view model trained on public phantoms is the base; sites A and B are two phantom "vendors"
(darker with fine speckle, brighter with coarse speckle and noise) that fine-tune it for view and
grade together (``train_grade``, ``grade.view_weight=1``); the two site runs are merged
(``shared.finetune.merge``) and compared with joint training on the pooled data.  The table and
plot are the core's (``shared.finetune.merge_demo.demo_section``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

TITLE = "cardiac: echo view + grade"

#: vendor looks: site name -> (gain, speckle, noise, seed)
VENDORS: dict[str, tuple[float, float, float, int]] = {
    "vendor A (dark, fine speckle)": (0.75, 0.3, 0.0, 301),
    "vendor B (bright, coarse speckle + noise)": (1.3, 0.8, 0.06, 302),
}


def vendorize(root: Path, gain: float, speckle: float, noise: float, seed: int) -> int:
    """Give phantom PNGs a vendor look in place: gain, multiplicative speckle (Rayleigh) and additive noise.

    Args:
        root: folder searched recursively for ``*.png``.
        gain: intensity gain.
        speckle: strength of the multiplicative Rayleigh speckle.
        noise: standard deviation of the additive Gaussian noise, as a fraction of 255.
        seed: random seed.

    Returns:
        Number of images changed.
    """
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    n = 0
    for p in sorted(root.rglob("*.png")):
        raw = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        if raw is None:
            continue
        img = raw.astype(np.float32)
        gray = img if img.ndim == 2 else img[..., 0]  # phantoms are gray, written as RGB
        sp = 1.0 + speckle * (rng.rayleigh(0.6, size=gray.shape).astype(np.float32) - 0.75)
        new = (gray * gain * sp + rng.normal(0, noise * 255, size=gray.shape)) * (gray > 0)
        new = np.clip(new, 0, 255).astype(np.uint8)
        cv2.imwrite(str(p), new if img.ndim == 2 else np.repeat(new[..., None], img.shape[2], axis=2))
        n += 1
    return n


def sizes(fast: bool) -> dict[str, Any]:
    """The scenario's size: phantoms per view, phantom (H, W), model input px, base / site epochs.

    ``fast`` (the demo): 10 phantoms per view drawn at 72 x 96 and trained at 40 px in batches of 8,
    base 6 epochs, sites 1 epoch, so the whole scenario runs in about a minute and a half on 2 idle
    cores (resnet18's optimiser steps, not the pixels, dominate at this size).
    """
    if fast:
        return {"n": 10, "phantom": (72, 96), "size": 40, "batch": 8, "base_epochs": 6, "site_epochs": 1, "sessions": 5}
    return {
        "n": 100,
        "phantom": (144, 192),
        "size": 112,
        "batch": 16,
        "base_epochs": 10,
        "site_epochs": 6,
        "sessions": 8,
    }


def merge_demo(out_dir: Path, fast: bool = True) -> dict[str, Any]:
    """Base view model on public phantoms; two phantom vendors fine-tune it (view + grade); merges; joint.

    Args:
        out_dir: scratch folder of the scenario (data, runs; kept between calls, reused when present).
        fast: demo size (see :func:`sizes`).

    Returns:
        ``{"title", "sites", "metric", "rows": {model: {site: {"accuracy", "mae"}}}, "caption", "seconds"}``.
    """
    from medtransfer.apps.cardiac import data as D
    from medtransfer.apps.cardiac import synthetic as C
    from medtransfer.apps.cardiac import train as T
    from medtransfer.shared.finetune.merge_demo import Steps, joint_manifest, merge_all, model_table
    from medtransfer.shared.rundir import RunDir

    out = Path(out_dir)
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    z = sizes(fast)
    n, size, base_epochs, site_epochs = z["n"], z["size"], z["base_epochs"], z["site_epochs"]
    ov = [f"preprocessing.size={size}", f"train.batch_size={z['batch']}", "train.lr=0.002", "train.progress=false"]
    data = out / "data"
    tree = {"n_per_view": n, "size": z["phantom"], "n_sessions": z["sessions"]}
    with Steps("merge demo (cardiac)", 8) as bar:
        if not (data / "public" / "Cactus Dataset").is_dir():
            C.make_cactus_tree(data / "public", seed=200, **tree)
        public = D.import_cactus(data / "public", data / "public.csv")
        csvs = {}
        for i, (site, look) in enumerate(VENDORS.items()):
            root = data / f"site_{'ab'[i]}"
            if not (root / "Cactus Dataset").is_dir():
                C.make_cactus_tree(root, seed=201 + i, **tree)
                vendorize(root, *look)
            csvs[site] = D.import_cactus(root, data / f"site_{'ab'[i]}.csv")
        joint = joint_manifest(csvs, data / "joint.csv")
        bar.step("data")
        runs = out / "runs"

        def fine_tune(manifest: Path, run: Path) -> Path:
            if not (run / "checkpoints" / "best.pt").is_file():
                T.train_grade(manifest, run, runs / "base", [*ov, f"train.epochs={site_epochs}", "grade.view_weight=1"])
            return run

        base = runs / "base"
        if not (base / "checkpoints" / "best.pt").is_file():
            T.train_view(public, base, [*ov, f"train.epochs={base_epochs}"])
        bar.step("base")
        site_runs = {}
        for i, site in enumerate(csvs):
            site_runs[site] = fine_tune(csvs[site], runs / f"site_{'ab'[i]}")
            bar.step(site)
        merged = merge_all(list(site_runs.values()), base, runs)
        bar.step("merges")
        joint_run = fine_tune(joint, runs / "joint")
        bar.step("joint training")
        models = model_table("base (public view model)", base, site_runs, merged, joint_run)
        rows: dict[str, dict[str, dict[str, float]]] = {}
        scratch = out / "eval"
        for name, run in models.items():
            model, ck = RunDir(run).load_model("best")
            rows[name] = {}
            for j, (site, csv) in enumerate(csvs.items()):
                where = scratch / f"{run.name}_{j}"
                where.mkdir(parents=True, exist_ok=True)
                m = T.evaluate(model, csv, ck["preprocessing"], where, need_grade=True, views=list(ck["labels"]))
                rows[name][site] = {"accuracy": float(m["accuracy"]), "mae": float(m["mae"])}
        bar.step("evaluation")
    h, w = z["phantom"]
    caption = (
        f"cardiac, CACTUS-layout phantoms ({h}x{w} px): resnet18 at {size} px from scratch; base = view model "
        f"trained {base_epochs} epochs on {n} public phantoms per view; each vendor and the joint model fine-tune "
        f"it {site_epochs} epoch{'s' if site_epochs > 1 else ''} for view and grade (grade.view_weight=1) on {n} "
        "phantoms per view per vendor. Cells: test view accuracy / grade MAE (0-10; the base's grade head is "
        "untrained). "
        + (
            "Demo size (fast): small images, few phantoms, batches of 8 and a 1-epoch site fine-tune keep this "
            "section near a minute and a half on 2 idle cores; "
            "the full-size scenario (112 px, 100 phantoms per view, 10 + 6 epochs) runs with fast=False. "
            if fast
            else ""
        )
        + "Tiny models and epochs: the numbers show the mechanism, not clinical performance."
    )
    return {
        "title": TITLE,
        "sites": list(csvs),
        "metric": "accuracy",
        "rows": rows,
        "caption": caption,
        "seconds": time.time() - t0,
    }
