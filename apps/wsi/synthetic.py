"""Fixture generators shared by the demo and the tests.

* :func:`make_slide`: a small pyramidal tiled TIFF (tifffile) with H&E-like tissue blobs on a
  white background, MPP in the resolution tags (or none, to test ``--mpp``).
* :func:`planted_bags`: synthetic patch-feature bags keyed to real TCGA label tables, with a
  planted prognostic signal: the share of "risk" patches grows with the patient's hazard (from
  the real survival time), along a direction that is partly shared between cancers, so a model
  trained on one cancer helps another (what MoE-PKT exploits).  Torch-free.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from medtransfer.apps.wsi.labels import Case


def make_slide(
    path: str | Path,
    size: tuple[int, int] = (1536, 1024),
    mpp: Optional[float] = 0.5,
    levels: int = 3,
    seed: int = 0,
    tissue: bool = True,
    tile: int = 256,
) -> Path:
    """Write a pyramidal RGB TIFF (level 0 ``size`` = (W, H), each level half the previous).

    Args:
        path: output .tif.
        size: level-0 width, height (multiples of 16).
        mpp: microns per pixel written as resolution tags; None = no MPP metadata.
        levels: pyramid levels (SubIFDs).
        seed: random seed.
        tissue: False = blank (white) slide.
        tile: TIFF tile size.

    Returns:
        The file path.
    """
    import tifffile
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    W, H = size
    img = np.full((H, W, 3), 242, np.uint8)
    if tissue:
        yy, xx = np.mgrid[0:H, 0:W]
        blob = np.zeros((H, W), np.float32)
        for _ in range(4):
            cx, cy = rng.uniform(0.2, 0.8) * W, rng.uniform(0.25, 0.75) * H
            rx, ry = rng.uniform(0.12, 0.25) * W, rng.uniform(0.15, 0.3) * H
            blob += np.exp(-(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2))
        mask = blob > 0.6
        noise = ndimage.gaussian_filter(rng.standard_normal((H, W)).astype(np.float32), 3)
        nuclei = ndimage.gaussian_filter(rng.standard_normal((H, W)).astype(np.float32), 1.5) > 0.35
        pink = np.stack([225 + 20 * noise, 140 + 30 * noise, 185 + 20 * noise], -1)
        purple = np.array([95, 60, 150], np.float32)
        tis = np.where(nuclei[..., None], purple, pink)
        img = np.where(mask[..., None], np.clip(tis, 0, 255), img).astype(np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opts = dict(tile=(tile, tile), photometric="rgb", compression="zlib")
    res = {} if mpp is None else dict(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    with tifffile.TiffWriter(path) as tif:
        tif.write(img, subifds=levels - 1, **opts, **res)
        lvl = img
        for i in range(1, levels):
            lvl = lvl[: lvl.shape[0] // 2 * 2, : lvl.shape[1] // 2 * 2]
            lvl = lvl.reshape(lvl.shape[0] // 2, 2, lvl.shape[1] // 2, 2, 3).mean((1, 3)).astype(np.uint8)
            r = (
                {}
                if mpp is None
                else dict(resolution=(1e4 / (mpp * 2**i), 1e4 / (mpp * 2**i)), resolutionunit="CENTIMETER")
            )
            tif.write(lvl, subfiletype=1, **opts, **r)
    return path


def hazard_score(cases: Sequence[Case]) -> np.ndarray:
    """A per-patient latent hazard consistent with the real labels: the martingale residual.

    ``r_i = event_i - H(t_i)`` with the Nelson-Aalen cumulative hazard ``H`` of each study: early
    events score highest, then later events, then censored patients by follow-up length, so the
    score is concordant with every comparable pair.  Standardised per study.
    """
    t = np.array([max(c.time, 1e-3) for c in cases])
    e = np.array([c.event for c in cases], float)
    study = np.array([c.study for c in cases])
    z = np.zeros(len(cases))
    for s in np.unique(study):
        sel = study == s
        ts, es = t[sel], e[sel]
        grid = np.unique(ts[es > 0])
        at_risk = np.array([(ts >= g).sum() for g in grid], float)
        d = np.array([((ts == g) & (es > 0)).sum() for g in grid], float)
        cum = np.concatenate([[0.0], np.cumsum(d / np.maximum(at_risk, 1))])
        H = cum[np.searchsorted(grid, ts, side="right")]
        r = es - H
        z[sel] = (r - r.mean()) / (r.std() + 1e-9)
    return z


def cancer_direction(
    study: str, dim: int, seed: int = 0, shared: float = 0.7, families: Optional[dict[str, str]] = None
) -> np.ndarray:
    """Unit risk direction of a cancer: ``shared`` of a family direction + the rest its own."""
    families = families or {
        "tcga_coadread": "gi",
        "tcga_stad": "gi",
        "tcga_blca": "uro",
        "tcga_hnsc": "squam",
        "tcga_brca": "breast",
    }
    fam = families.get(study, study)
    g = np.random.default_rng([seed, 7]).standard_normal(dim)  # common to all cancers
    f = np.random.default_rng([seed, 11, zlib.crc32(fam.encode())]).standard_normal(dim)
    o = np.random.default_rng([seed, 13, zlib.crc32(study.encode())]).standard_normal(dim)
    v = 0.5 * g / np.linalg.norm(g) + shared * f / np.linalg.norm(f) + (1 - shared) * o / np.linalg.norm(o)
    return v / np.linalg.norm(v)


def planted_bags(
    cases: Sequence[Case],
    dim: int = 64,
    n_patches: tuple[int, int] = (24, 64),
    strength: float = 2.5,
    seed: int = 0,
    per_slide: bool = False,
    slide_noise: float = 0.0,
    style: float = 0.1,
) -> dict[str, np.ndarray]:
    """Feature bags with a planted survival signal.

    Each patch is N(cancer style, I); a fraction ``sigmoid(2 * hazard)`` of each patient's patches
    also carries ``strength`` times the cancer's risk direction.

    Args:
        cases: patients (from :func:`medtransfer.apps.wsi.labels.read_table`).
        dim: feature size.
        n_patches: min / max patches per slide.
        strength: signal amplitude.
        seed: random seed.
        per_slide: key bags by slide id stem instead of case id (each slide its own bag).
        style: std of each cancer's offset (a domain shift between cancers).
        slide_noise: std of a per-slide offset added to all its patches (stain / scanner batch
            effects): makes the risk direction harder to find from few patients.

    Returns:
        key -> (n, dim) float32 bag (a case's slides are concatenated unless ``per_slide``).
    """
    from medtransfer.apps.wsi.labels import slide_stem

    z = hazard_score(cases)
    out: dict[str, np.ndarray] = {}
    dirs: dict[str, np.ndarray] = {}
    styles: dict[str, np.ndarray] = {}
    for c, zi in zip(cases, z):
        if c.study not in dirs:
            dirs[c.study] = cancer_direction(c.study, dim, seed)
            styles[c.study] = (
                np.random.default_rng([seed, 17, zlib.crc32(c.study.encode())]).standard_normal(dim) * style
            )
        frac = 1.0 / (1.0 + np.exp(-2.0 * zi))
        parts = []
        for sid in c.slides:
            rng = np.random.default_rng([seed, zlib.crc32(sid.encode())])
            n = int(rng.integers(n_patches[0], n_patches[1] + 1))
            x = rng.standard_normal((n, dim)).astype(np.float32) + styles[c.study]
            if slide_noise:
                x += (slide_noise * rng.standard_normal(dim)).astype(np.float32)
            risky = rng.random(n) < frac
            x[risky] += strength * dirs[c.study]
            if per_slide:
                out[slide_stem(sid)] = x.astype(np.float32)
            parts.append(x)
        if not per_slide:
            out[c.case_id] = np.concatenate(parts).astype(np.float32)
    return out


def make_survpath_tables(
    root: str | Path,
    studies: Sequence[str] = ("tcga_aaa", "tcga_bbb"),
    n_cases: int = 60,
    folds: int = 5,
    seed: int = 0,
) -> Path:
    """Write SurvPath-layout tables and k-fold splits with random labels (for when the real ones are absent).

    Some patients get two slides. Returns the labels root.
    """
    import csv

    rng = np.random.default_rng(seed)
    root = Path(root)
    for s in studies:
        md = root / "datasets_csv" / "metadata"
        md.mkdir(parents=True, exist_ok=True)
        cols = [
            "",
            "case_id",
            "slide_id",
            "age",
            "site",
            "survival_months",
            "survival_months_dss",
            "survival_months_pfi",
            "censorship",
            "censorship_dss",
            "censorship_pfi",
            "is_female",
            "oncotree_code",
            "train",
        ]
        rows, ids = [], []
        for i in range(n_cases):
            cid = f"TCGA-{s[-3:].upper()}-{i:04d}"
            ids.append(cid)
            t = float(rng.exponential(30) + 1)
            c = int(rng.random() < 0.6)
            for k in range(1 + int(rng.random() < 0.15)):
                sid = f"{cid}-01Z-00-DX{k + 1}.{zlib.crc32((cid + str(k)).encode()):08X}.svs"
                rows.append([len(rows), cid, sid, 60, "XX", t, t, t, c, c, c, 0, s[-4:].upper(), 1.0])
        with open(md / f"{s}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(cols)
            w.writerows(rows)
        sd = root / "splits" / "5foldcv" / s
        sd.mkdir(parents=True, exist_ok=True)
        order = rng.permutation(len(ids))
        for k in range(folds):
            val = [ids[j] for j in order[k::folds]]
            train = [x for x in ids if x not in set(val)]
            with open(sd / f"splits_{k}.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["", "train", "val"])
                for j in range(len(train)):
                    w.writerow([j, train[j], val[j] if j < len(val) else ""])
    return root
