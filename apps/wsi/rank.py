"""The wsi ``rank_features`` hook and the helpers MoE-PKT's automatic expert choice uses.

A candidate is a survival-MIL run folder (a source-cancer model, e.g. ``<pkt out>/source_<study>``,
or any ``wsi train`` run) or a bundle through its run folder; the patch features are fixed by the
bags, so registry backbones are not candidates here.  The feature of a patient is the source
model's frozen bag embedding (the attention-pooled ``hidden``-d vector its survival head reads).

Survival is ranked with the regression variants on one scalar per patient, the **martingale
residual** of the null (Nelson-Aalen) model on the training patients, ``r_i = event_i - H(t_i)``:
higher = more events than the cohort's baseline hazard predicts by that time (a risk that uses
censored patients too).  LogME takes it standardised, TMI in quantile bins, the probes score the
Spearman correlation of out-of-fold predictions with it.

The target (``--target``) is the SurvPath labels folder; ``--opt study=tcga_xxx`` names the target
cancer, ``--opt features=DIR`` the h5 bags (or ``--opt synthetic=true`` planted bags, ``dim``,
``strength``), ``--opt fold=K`` ranks on official fold K's training patients (default 0; -1 = all).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from medtransfer.shared.utils.errors import MedTransferError


def martingale_residuals(times: np.ndarray, events: np.ndarray) -> np.ndarray:
    """``event_i - H(t_i)`` with ``H`` the Nelson-Aalen cumulative hazard of the same patients."""
    t = np.asarray(times, np.float64)
    e = np.asarray(events, np.float64)
    ut = np.unique(t[e > 0])
    at_risk = np.array([(t >= u).sum() for u in ut], np.float64)
    d = np.array([((t == u) & (e > 0)).sum() for u in ut], np.float64)
    cum = np.cumsum(d / np.maximum(at_risk, 1))
    idx = np.searchsorted(ut, t, side="right") - 1
    h = np.where(idx >= 0, cum[np.clip(idx, 0, None)] if len(cum) else 0.0, 0.0)
    return e - h


def bag_embeddings(model: Any, bags: Sequence[np.ndarray], batch_size: int = 16) -> np.ndarray:
    """The frozen MIL's bag embeddings (n, hidden) for bags (n_i, D), in order."""
    import torch

    from medtransfer.apps.wsi.survival import pad_bags

    mil = getattr(model, "target", model)  # MoE-PKT: its target MIL
    mil.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(bags), batch_size):
            x, m = pad_bags(bags[i : i + batch_size])
            emb, _ = mil.embed(torch.from_numpy(x), torch.from_numpy(m))
            out.append(emb.float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _cohort(labels: Path, opts: dict[str, Any]) -> tuple[list[Any], dict[str, np.ndarray]]:
    from medtransfer.apps.wsi.labels import find_studies, read_splits, read_table
    from medtransfer.apps.wsi.train import load_cohort

    study = opts.get("study")
    if not study:
        raise MedTransferError("wsi rank needs --opt study=<target cancer> (and --opt features=DIR or synthetic=true)")
    endpoint = str(opts.get("endpoint", "dss"))
    bags = None
    if opts.get("synthetic"):
        from medtransfer.apps.wsi.synthetic import planted_bags

        cases = []
        for s, p in find_studies(labels).items():
            cases += read_table(p, "dss", s)[0]
        bags = planted_bags(
            cases,
            dim=int(opts.get("dim", 128)),
            seed=int(opts.get("seed", 0)),
            strength=float(opts.get("strength", 1.5)),
        )
    elif not opts.get("features"):
        raise MedTransferError("wsi rank needs --opt features=DIR (h5 bags) or --opt synthetic=true")
    coh = load_cohort(labels, str(study), opts.get("features"), endpoint, bags)
    fold = int(opts.get("fold", 0))
    cases = coh.cases if fold < 0 else coh.subset(read_splits(labels, str(study))[fold][0])
    return cases, coh.bags


def rank_features(candidate: Any, manifest: Path, **opts: Any) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(embeddings (n, hidden), martingale residuals (n,))`` of the target's training patients.

    Args:
        candidate: a resolved ``shared.transferability.rank.Candidate`` (a run or a bundle's run).
        manifest: the SurvPath labels folder.
        **opts: ``study`` (required), ``features`` or ``synthetic`` (+ ``dim``, ``strength``, ``seed``),
            ``endpoint``, ``fold``.
    """
    from medtransfer.shared.rundir import RunDir

    if candidate.path is None:
        raise MedTransferError("wsi ranks survival-MIL runs (source-cancer models), not registry backbones")
    cases, bags = _cohort(Path(manifest), dict(opts))
    model, _ = RunDir(candidate.path).load_model("last")  # wsi runs keep their last epoch
    want = getattr(model, "target", model).fc[0].in_features
    got = next(iter(bags.values())).shape[1]
    if want != got:
        raise MedTransferError(f"the run reads {want}-d patch features, the target's bags are {got}-d")
    emb = bag_embeddings(model, [bags[c.case_id] for c in cases])
    y = martingale_residuals(np.array([c.time for c in cases]), np.array([c.event for c in cases]))
    yield emb, y.astype(np.float64)


def rank_demo(base: Path, demo_out: Path, fast: bool) -> dict[str, Any]:
    """The "Which source?" validation of this app at demo scale (see ``shared.transferability.demo``).

    Args:
        base: work folder.
        demo_out: the demo's output folder (its runs are reused where present).
        fast: demo scale.

    Returns:
        ``{"labels": {candidate: label}, "ranking": rank() result, "results": {candidate: fine-tuned result},
        "what": what the result is}`` (higher result = better).
    """
    from medtransfer.apps.wsi.labels import find_studies, read_table
    from medtransfer.apps.wsi.synthetic import make_survpath_tables, planted_bags
    from medtransfer.apps.wsi.train import load_cohort, make_config, pkt_compare, train_sources
    from medtransfer.shared.transferability.rank import rank

    studies = ("tcga_blca", "tcga_brca", "tcga_coadread", "tcga_hnsc", "tcga_stad")
    root = base / "labels"
    if not root.is_dir():
        make_survpath_tables(root, studies, 80 if fast else 120)
    cases = []
    for s, p in find_studies(root).items():
        cases += read_table(p, "dss", s)[0]
    bag_opts = {"dim": 64 if fast else 128, "strength": 1.5, "seed": 0}
    bags = planted_bags(cases, dim=bag_opts["dim"], seed=0, strength=1.5)
    cfg = make_config(overrides=[f"train.epochs={3 if fast else 10}"])
    srcs = list(studies[:4])
    models = train_sources({s: load_cohort(root, s, bags=bags) for s in srcs}, cfg, base / "pkt")
    labels = {str(base / "pkt" / f"source_{s}"): s for s in srcs}
    res = rank(
        "wsi",
        root,
        list(labels),
        base / "rank",
        opts={"study": "tcga_stad", "synthetic": True, **bag_opts, "fold": 0},
        progress=False,
    )
    cmp = pkt_compare(
        load_cohort(root, "tcga_stad", bags=bags), models, root, "tcga_stad", cfg, base / "pkt", 0, 1, "all"
    )
    results = {spec: float(cmp["methods"][f"finetune:{s}"]["mean"]) for spec, s in labels.items()}
    return {"labels": labels, "ranking": res, "results": results, "what": "C-index after fine-tuning (fold 0)"}
