"""Survival training on feature bags through ``shared.finetune.fit``: one model, k-fold CV, MoE-PKT.

Protocol (written into every report): patient-level bags (a patient's slides pooled), official
5-fold splits (train on the fold's train cases, report on its held-out cases), hazard bins cut
on the training cases only, a fixed number of epochs and the LAST epoch's weights (no early
stopping, no model selection on held-out cases), seeds fixed per fold.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from medtransfer.apps.wsi.labels import Case, find_studies, read_splits, read_table, slide_stem
from medtransfer.apps.wsi.model import MoEPKT, build_mil
from medtransfer.apps.wsi.survival import (
    c_index,
    km_plot,
    make_bins,
    mean_sd,
    nll_loss,
    pad_bags,
    risk_from_logits,
    td_auc,
    to_bins,
)
from medtransfer.shared.config import resolve_config
from medtransfer.shared.finetune import TRAIN_DEFAULTS, fit
from medtransfer.shared.rundir import RunDir, model_builder, model_spec
from medtransfer.shared.utils.errors import ConfigError, InputError, MedTransferError

APP, TASK = "wsi", "survival"

DEFAULTS: dict[str, Any] = {
    # val_fraction: patients of the training fold held out (seeded) as the validation split on which
    # train_run records the trivial baseline for the export guard (0 = none: recorded on the held-out fold)
    "data": {"endpoint": "dss", "max_patches": 512, "val_fraction": 0.2},
    "threads": 1,
    "min_steps": 150,  # small cohorts get more epochs: at least this many optimizer steps  # torch threads for bag models (small nets: more threads only add contention)
    "model": {"hidden": 64, "attn_dim": 32, "dropout": 0.25, "n_bins": 4, "bins": "quantile"},
    "loss": {"alpha": 0.5},
    # routing: renorm (ours: kept top-k probabilities rescaled to 1) | raw (Path-PKT: softmax values as they are)
    # balance_times_experts: ours scales the balance loss by E (Switch); Path-PKT does not
    # self_expert: Path-PKT adds the target's own fold model (cancer-specific, same training patients) as an expert
    "moe": {
        "top_k": 2,
        "balance_weight": 0.01,
        "z_weight": 0.01,
        "routing": "renorm",
        "balance_times_experts": True,
        "self_expert": False,
    },
    "train": {
        **TRAIN_DEFAULTS,
        "epochs": 20,
        "batch_size": 16,
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "patience": 0,
        "progress": False,
        "amp": False,
    },
}


def make_config(recipe: Optional[str | Path] = None, overrides: Any = None) -> dict[str, Any]:
    """The resolved config: defaults <- recipe <- overrides (validated)."""
    return resolve_config(DEFAULTS, recipe, overrides)


# ---------------------------------------------------------------------------- data
class BagDataset(Dataset):
    """Patient bags with survival targets; items are (bag, bin, censored, time)."""

    def __init__(
        self,
        bags: Sequence[np.ndarray],
        bins: np.ndarray,
        censored: np.ndarray,
        times: np.ndarray,
        max_patches: int = 0,
    ) -> None:
        self.bags, self.bins, self.censored, self.times = list(bags), bins, censored, times
        self.max_patches = int(max_patches or 0)

    def __len__(self) -> int:
        return len(self.bags)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int, int, float]:
        b = self.bags[i]
        if self.max_patches and len(b) > self.max_patches:
            b = b[np.sort(np.random.choice(len(b), self.max_patches, replace=False))]
        return b, int(self.bins[i]), int(self.censored[i]), float(self.times[i])


def collate_bags(items: Sequence[tuple[np.ndarray, int, int, float]]) -> tuple[torch.Tensor, ...]:
    """Pad a batch of bags: (x (B,N,D), mask (B,N), bin, censored, time)."""
    x, m = pad_bags([it[0] for it in items])
    return (
        torch.from_numpy(x),
        torch.from_numpy(m),
        torch.tensor([it[1] for it in items]),
        torch.tensor([it[2] for it in items]),
        torch.tensor([it[3] for it in items], dtype=torch.float32),
    )


def forward_fn(model: torch.nn.Module, batch: Any) -> tuple[Any, Any]:
    """fit's forward: logits (plus router outputs for MoE-PKT) and the survival targets."""
    x, m, y, c, t = batch
    tgt = {"bin": y, "censored": c, "time": t}
    if isinstance(model, MoEPKT) or isinstance(getattr(model, "module", None), MoEPKT):
        out = (model.module if hasattr(model, "module") else model).route(x, m)
        return {
            "logits": out["logits"],
            "probs": out["probs"],
            "keep": out["keep"],
            "router_logits": out["router_logits"],
        }, tgt
    return {"logits": model(x, m)}, tgt


def make_loss(cfg: dict[str, Any]):
    """loss_fn(outputs, targets): hazard NLL (+ balance and z losses for MoE-PKT)."""
    alpha = float(cfg["loss"]["alpha"])
    wb, wz = float(cfg["moe"]["balance_weight"]), float(cfg["moe"]["z_weight"])
    times_e = bool(cfg["moe"]["balance_times_experts"])

    def loss_fn(out: dict[str, torch.Tensor], tgt: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = nll_loss(out["logits"], tgt["bin"], tgt["censored"], alpha=alpha)
        if "probs" in out:
            aux = MoEPKT.aux_losses(out, scale_by_experts=times_e)
            loss = loss + wb * aux["balance"] + wz * aux["z"]
        return loss

    return loss_fn


def metric_fn(out: dict[str, np.ndarray], tgt: dict[str, np.ndarray]) -> dict[str, float]:
    """C-index on a set of patients (fit's per-epoch metric when a validation set is given)."""
    risk, _, _ = risk_from_logits(out["logits"])
    return {"c_index": c_index(tgt["time"], 1 - tgt["censored"], risk)}


@dataclass
class Cohort:
    """Patients with bags: cases[i] pairs with bags[cases[i].case_id]; ``files`` (case id -> its slides'
    h5 bags) when the bags were read from a features folder (empty for in-memory bags);
    ``extraction``: what those bags' features are (encoder and its weights, tile MPP / size, int8
    model: the bags' own record, one for the whole folder), recorded by the runs trained on them."""

    cases: list[Case]
    bags: dict[str, np.ndarray]
    errors: list[dict[str, str]] = field(default_factory=list)
    files: dict[str, list[Path]] = field(default_factory=dict)
    extraction: dict[str, Any] = field(default_factory=dict)

    def run_extra(self) -> dict[str, Any]:
        """What a run trained on these bags records of them (``bag_extraction``; checked by predict)."""
        return {"bag_extraction": dict(self.extraction)} if self.extraction else {}

    def subset(self, ids: Sequence[str]) -> list[Case]:
        idx = {c.case_id: c for c in self.cases}
        return [idx[i] for i in ids if i in idx]


def load_cohort(
    labels_root: str | Path,
    study: str,
    features: Optional[str | Path] = None,
    endpoint: str = "dss",
    bags: Optional[dict[str, np.ndarray]] = None,
) -> Cohort:
    """Cases of one study with their bags (from an h5 folder or given in memory by case id).

    Slides without an h5 and h5 files without a label become error rows; a patient with no bag
    at all is dropped (error row); the rest is kept.
    """
    from medtransfer.apps.wsi.features import (
        ImplausibleBagError,
        extraction_mismatch,
        extraction_record,
        find_bags,
        read_bag,
    )
    from medtransfer.shared.runtime.gates import check_feature_bag

    tables = find_studies(labels_root)
    if study not in tables:
        raise InputError(labels_root, f"unknown study '{study}' (found: {', '.join(tables)})")
    cases, errors = read_table(tables[study], endpoint, study)
    out: dict[str, np.ndarray] = {}
    files: dict[str, list[Path]] = {}
    if bags is not None:
        out = {c.case_id: bags[c.case_id] for c in cases if c.case_id in bags}
        for cid, x in out.items():  # in-memory bags pass the same gate as files
            try:
                check_feature_bag(x, f"bag of case {cid}")
            except InputError as e:
                raise ImplausibleBagError(e.path, e.problem) from None
        errors += [
            {"study": study, "case_id": c.case_id, "slide_id": "", "error": "no bag"}
            for c in cases
            if c.case_id not in bags
        ]
    else:
        if features is None:
            raise MedTransferError("give a features folder (h5 bags) or in-memory bags")
        fdir = Path(features)
        if not fdir.is_dir():
            raise InputError(fdir, "features folder not found")
        have = find_bags(fdir)
        used = set()
        first: Optional[tuple[Path, dict[str, Any]]] = None  # every bag must come from its extraction
        for c in cases:
            parts = []
            for sid in c.slides:
                st = slide_stem(sid)
                if st not in have:
                    errors.append(
                        {"study": study, "case_id": c.case_id, "slide_id": sid, "error": "label row has no feature bag"}
                    )
                    continue
                try:
                    feats, _, attrs = read_bag(have[st])
                    first = first or (have[st], attrs)
                    if diff := extraction_mismatch(attrs, first[1]):
                        # e.g. an int8 extraction interrupted over an fp32 folder: training would mix encoders
                        raise MedTransferError(
                            f"{have[st]}: another extraction than {first[0].name} ({diff}); a features folder "
                            "must hold one: run wsi extract again into it with one setting"
                        )
                    parts.append(feats)
                    files.setdefault(c.case_id, []).append(have[st].resolve())
                    used.add(st)
                except ImplausibleBagError:
                    raise  # NaN / inf / out-of-range features would poison training: refuse, naming the file
                except InputError as e:
                    errors.append({"study": study, "case_id": c.case_id, "slide_id": sid, "error": str(e)})
            if parts:
                out[c.case_id] = np.concatenate(parts)
        errors += [
            {"study": study, "case_id": "", "slide_id": s, "error": "feature bag has no label row"}
            for s in sorted(set(have) - used)
        ]
    kept = [c for c in cases if c.case_id in out]
    if not kept:
        raise InputError(labels_root, f"{study}: no patient has a feature bag")
    return Cohort(kept, out, errors, files, extraction_record(first[1]) if bags is None and first else {})


def check_same_extraction(cohorts: dict[str, Cohort]) -> None:
    """Refuse studies whose bags come from different extractions (source models and a target
    trained on other features would be mixed by fine-tuning and MoE-PKT routing).

    Raises:
        MedTransferError: one line naming the two studies and the difference.
    """
    from medtransfer.apps.wsi.features import extraction_mismatch

    items = [(k, c) for k, c in cohorts.items() if c.extraction]
    for study, coh in items[1:]:
        if diff := extraction_mismatch(coh.extraction, items[0][1].extraction):
            raise MedTransferError(
                f"{study}: its bags come from another extraction than {items[0][0]}'s ({diff}); "
                "sources and target must share one: extract them with one setting"
            )


def _arrays(cases: Sequence[Case]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([c.time for c in cases], float), np.array([c.censored for c in cases], int)


def _dataset(cases: Sequence[Case], bags: dict[str, np.ndarray], edges: np.ndarray, max_patches: int) -> BagDataset:
    t, c = _arrays(cases)
    return BagDataset([bags[x.case_id] for x in cases], to_bins(t, edges), c, t, max_patches)


# ---------------------------------------------------------------------------- training
@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Temporarily set torch's intra-op threads (0 = leave as is)."""
    old = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def train_model(
    model: torch.nn.Module,
    cases: Sequence[Case],
    bags: dict[str, np.ndarray],
    edges: np.ndarray,
    cfg: dict[str, Any],
    run_dir: str | Path,
    head: Optional[list[str]] = None,
    extra: Optional[dict[str, Any]] = None,
    val_cases: Optional[Sequence[Case]] = None,
) -> torch.nn.Module:
    """Fit a survival model with ``shared.finetune.fit``; returns it with its LAST-epoch weights.

    Args:
        model: GatedAttentionMIL or MoEPKT.
        cases: training patients.
        bags: case id -> (n, D).
        edges: hazard bin edges (from the training cases).
        cfg: resolved config.
        run_dir: fit's run folder (resumed when complete: nothing is retrained).
        head: trainable prefixes with ``train.strategy=linear_probe`` (MoE: all but the sources).
        extra: saved into run.json and the checkpoints (edges, feature dim, model kind ...).
        val_cases: optional validation patients (never the held-out fold).
    """
    mp = int(cfg["data"]["max_patches"])
    ds = _dataset(cases, bags, edges, mp)
    val = _dataset(val_cases, bags, edges, 0) if val_cases else None
    state = {"wsi": {"edges": [float(e) for e in edges], **(extra or {})}}
    steps = max(1, math.ceil(len(ds) / int(cfg["train"]["batch_size"])))
    need = math.ceil(int(cfg.get("min_steps", 0)) / steps)
    if need > int(cfg["train"]["epochs"]):
        cfg = copy.deepcopy(cfg)
        cfg["train"]["epochs"] = need
    with torch_threads(int(cfg.get("threads", 1))):
        fit(
            model,
            ds,
            val,
            cfg=cfg,
            run_dir=run_dir,
            app=APP,
            task=TASK,
            loss_fn=make_loss(cfg),
            metric_fn=metric_fn if val else None,
            forward_fn=forward_fn,
            collate_fn=collate_bags,
            head=head,
            monitor="val_c_index" if val else "train_loss",
            mode="max" if val else "min",
            extra_state=state,
            model_spec=model_spec(
                builder="medtransfer.apps.wsi.train:build_for_run",
                in_dim=int((extra or {}).get("in_dim", 0)),
                cfg={k: v for k, v in cfg.items() if k in ("model", "moe")},
                kind=str((extra or {}).get("kind", "mil")),
                sources=list((extra or {}).get("sources", []) or []),
            )
            if (extra or {}).get("in_dim")
            else None,
        )
    run = RunDir(run_dir)
    model.load_state_dict(run.load_checkpoint("last")["model"])
    run.update_info(**state)
    return model.eval()


@torch.no_grad()
def predict_logits(model: torch.nn.Module, bags: Sequence[np.ndarray], batch_size: int = 32) -> dict[str, np.ndarray]:
    """Hazard logits (and MoE gates when the model is MoE-PKT) for bags, in order."""
    model.eval()
    dev = next(model.parameters()).device  # a CUDA-trained model evaluates where it lives
    logits, gates = [], []
    with torch_threads(1):
        for i in range(0, len(bags), batch_size):
            x, m = pad_bags(bags[i : i + batch_size])
            xt, mt = torch.from_numpy(x).to(dev), torch.from_numpy(m).to(dev)
            if isinstance(model, MoEPKT):
                out = model.route(xt, mt)
                logits.append(out["logits"].float().cpu().numpy())
                gates.append(out["gates"].float().cpu().numpy())
            else:
                logits.append(model(xt, mt).float().cpu().numpy())
    out = {"logits": np.concatenate(logits)}
    if gates:
        out["gates"] = np.concatenate(gates)
    return out


def evaluate(
    model: torch.nn.Module, cases: Sequence[Case], bags: dict[str, np.ndarray], train_cases: Sequence[Case]
) -> dict[str, Any]:
    """C-index and time-dependent AUC on ``cases`` (train cases give the censoring distribution)."""
    pred = predict_logits(model, [bags[c.case_id] for c in cases])
    risk, _, _ = risk_from_logits(pred["logits"])
    t, cen = _arrays(cases)
    tt, tc = _arrays(train_cases)
    auc, _, _ = td_auc(tt, 1 - tc, t, 1 - cen, risk)
    out = {
        "c_index": c_index(t, 1 - cen, risk),
        "td_auc": auc,
        "n": len(cases),
        "events": int((1 - cen).sum()),
        "risk": risk,
    }
    if "gates" in pred:
        out["gates"] = pred["gates"]
    return out


#: Name of the constant-risk baseline (every pair tied: C-index 0.5).
CONSTANT_BASELINE = "constant risk (C-index 0.5)"
AGE_BASELINE = "age-only Cox model"


def age_cox_c_index(train_cases: Sequence[Case], cases: Sequence[Case]) -> Optional[float]:
    """C-index on ``cases`` of a Cox model with age as its only covariate, fit on ``train_cases``
    (scikit-survival ``CoxPHSurvivalAnalysis``).

    Returns:
        The C-index, or None when ages are missing (any case of ``cases``, or fewer than 10
        training cases with an age), the training cases have no event, or the fit fails.
    """
    tr = [c for c in train_cases if c.age is not None]
    if len(tr) < 10 or not cases or any(c.age is None for c in cases) or not any(c.event for c in tr):
        return None
    try:
        from sksurv.linear_model import CoxPHSurvivalAnalysis
        from sksurv.util import Surv
    except ImportError:  # scikit-survival not installed: the constant baseline only
        return None
    import warnings

    ages = np.array([c.age for c in tr], float)
    mu, sd = float(ages.mean()), float(ages.std()) or 1.0
    x_tr = ((ages - mu) / sd)[:, None]  # standardised: the fit is stable, the ranking unchanged
    y_tr = Surv.from_arrays(event=np.array([bool(c.event) for c in tr]), time=np.array([c.time for c in tr], float))
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")  # convergence warnings on separable toy data
            cox = CoxPHSurvivalAnalysis(alpha=1e-3).fit(x_tr, y_tr)  # tiny ridge: finite when age separates
    except (ValueError, ArithmeticError, np.linalg.LinAlgError):
        return None
    risk = cox.predict(((np.array([c.age for c in cases], float) - mu) / sd)[:, None])
    t, cen = _arrays(cases)
    return float(c_index(t, 1 - cen, risk))


def survival_baseline(
    model: torch.nn.Module,
    cases: Sequence[Case],
    bags: dict[str, np.ndarray],
    train_cases: Sequence[Case],
    split: str = "val",
) -> dict[str, Any]:
    """The trivial-baseline record of a survival model on ``cases`` (the export guard's input).

    The bar is the stronger of C-index 0.5 (constant risk) and, where the tables give ages, an
    age-only Cox model fit on ``train_cases``; both are kept under ``baselines``.

    Returns:
        :func:`medtransfer.shared.export.guard.baseline_record` plus ``baselines`` and ``n``.
    """
    from medtransfer.shared.export.guard import baseline_record

    base = {CONSTANT_BASELINE: 0.5}
    age_c = age_cox_c_index(train_cases, cases)
    if age_c is not None and math.isfinite(age_c):
        base[AGE_BASELINE] = age_c
    name = max(base, key=lambda k: base[k])
    model_c = evaluate(model, cases, bags, train_cases)["c_index"] if cases else float("nan")
    rec = baseline_record("c_index", model_c, base[name], name, True, split)
    rec["baselines"] = base
    rec["n"] = len(cases)
    return rec


def record_baseline(
    model: torch.nn.Module,
    run_dir: str | Path,
    cases: Sequence[Case],
    bags: dict[str, np.ndarray],
    train_cases: Sequence[Case],
    split: str = "val",
) -> dict[str, Any]:
    """:func:`survival_baseline` written into ``run.json["baseline"]``; returns the record."""
    rec = survival_baseline(model, cases, bags, train_cases, split)
    RunDir(run_dir).update_info(baseline=rec)
    return rec


def split_val(cases: Sequence[Case], fraction: float, seed: int) -> tuple[list[Case], list[Case]]:
    """Patients ``(fit, val)``: a seeded ``fraction`` of ``cases`` held out for validation, stratified
    by event so that the validation C-index is defined (at least 2 patients and, where the cases
    have events, at least one event; at least 4 kept for fitting; none when impossible or fraction 0)."""
    cases = list(cases)
    if fraction <= 0 or len(cases) < 6:
        return cases, []
    n_val = min(max(int(round(len(cases) * float(fraction))), 2), len(cases) - 4)
    rng = np.random.default_rng(int(seed))
    events = [i for i, c in enumerate(cases) if c.event]
    others = [i for i, c in enumerate(cases) if not c.event]
    n_ev = min(len(events), max(1 if events else 0, int(round(n_val * len(events) / len(cases)))))
    idx = set(rng.permutation(events)[:n_ev].tolist()) | set(rng.permutation(others)[: n_val - n_ev].tolist())
    if len(idx) < n_val:  # too few censored patients: top up with events
        idx |= set([i for i in rng.permutation(events).tolist() if i not in idx][: n_val - len(idx)])
    return [c for i, c in enumerate(cases) if i not in idx], [c for i, c in enumerate(cases) if i in idx]


#: folder of a run that holds its reference manifest (and, for in-memory bags, the bags themselves)
REFERENCE_DIR = "reference_bags"
#: most patients recorded per split (validation, test): enough for drift statistics, small on disk
MAX_REFERENCE_CASES = 100


def _capped(cases: Sequence[Case], seed: int) -> list[Case]:
    """At most :data:`MAX_REFERENCE_CASES` patients (a seeded draw, in their original order)."""
    cases = list(cases)
    if len(cases) <= MAX_REFERENCE_CASES:
        return cases
    keep = set(np.random.default_rng([int(seed), 29]).permutation(len(cases))[:MAX_REFERENCE_CASES].tolist())
    return [c for i, c in enumerate(cases) if i in keep]


def record_reference(
    run_dir: str | Path,
    cohort: Cohort,
    val_cases: Sequence[Case],
    test_cases: Sequence[Case] = (),
    seed: int = 0,
    share_from: Optional[str | Path] = None,
    no_val_reason: str = "",
) -> Optional[Path]:
    """Record the bags ``medtransfer export`` builds the bundle's ``reference.json`` from.

    Writes ``RUN_DIR/reference_bags/manifest.csv`` (``path,label,split,censored``; label = survival
    months, as ``data import tcga`` spells it) with the run's VALIDATION patients (``split=val``: the
    reference) and its held-out fold (``split=test``: never the reference; for checking ``estimate`` on
    unseen patients), at most :data:`MAX_REFERENCE_CASES` of each.  Bags read from a features folder
    are listed where they are (one row per slide); in-memory bags (``--synthetic``) are written beside
    the manifest as ``val_0000.h5``... (no patient identifier in the names).  ``run.json`` gets
    ``manifest`` (the file) and ``wsi.reference`` (counts, or why there is none).

    Args:
        run_dir: the run folder.
        cohort: the patients and their bags.
        val_cases: validation patients (not fitted); none: no reference, ``no_val_reason`` recorded.
        test_cases: the held-out fold's patients.
        seed: seed of the draw when a split has more than :data:`MAX_REFERENCE_CASES` patients.
        share_from: another run of the same fold whose written bags are hard-linked instead of
            written again (same patients, same bags; copied where links are not possible).
        no_val_reason: why there are no validation patients (for the bundle's note).

    Returns:
        The manifest, or None when there are no validation patients.
    """
    import csv
    import os
    import shutil

    from medtransfer.apps.wsi.features import write_bag

    run = RunDir(run_dir)
    info = run.info()
    if not val_cases:
        reason = no_val_reason or "the run holds out no validation patients"
        info.setdefault("wsi", {})["reference"] = {"available": False, "reason": reason}
        info.setdefault("baseline", {"no_validation": reason})  # by design, said (export reads it)
        info.pop("manifest", None)
        run.write_info(info)
        return None
    ref_dir = run.path / REFERENCE_DIR
    ref_dir.mkdir(parents=True, exist_ok=True)
    for old in [*ref_dir.glob("val_*.h5"), *ref_dir.glob("test_*.h5")]:  # a re-run replaces what it wrote
        old.unlink()
    shared = Path(share_from) / REFERENCE_DIR if share_from else None
    rows: list[list[str]] = []
    counts = {}
    for split, cases in (("val", _capped(val_cases, seed)), ("test", _capped(test_cases, seed + 1))):
        counts[f"n_{split}"] = len(cases)
        for i, c in enumerate(cases):
            label = [f"{c.time:.4f}", split, str(int(c.censored))]
            if c.case_id in cohort.files:  # bags on disk: listed where they are, one row per slide
                rows += [[str(p), *label] for p in cohort.files[c.case_id]]
                continue
            name = f"{split}_{i:04d}.h5"
            dst = ref_dir / name
            if shared is not None and (shared / name).is_file():
                if dst.exists():
                    dst.unlink()
                try:
                    os.link(shared / name, dst)
                except OSError:
                    shutil.copyfile(shared / name, dst)
            else:
                x = cohort.bags[c.case_id]
                write_bag(dst, np.zeros((len(x), 2), np.int64), x, {"complete": True, "encoder": "in-memory"})
            rows.append([name, *label])
    man = ref_dir / "manifest.csv"
    with open(man, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split", "censored"])
        w.writerows(rows)
    info.setdefault("wsi", {})["reference"] = {
        "available": True,
        "manifest": f"{REFERENCE_DIR}/manifest.csv",
        "bags": "features folder" if cohort.files else "written (in-memory bags)",
        **counts,
    }
    info["manifest"] = str(man.resolve())  # as the other apps: the manifest export reads validation cases from
    run.write_info(info)
    return man


def _edges(cases: Sequence[Case], cfg: dict[str, Any]) -> np.ndarray:
    t, c = _arrays(cases)
    return make_bins(t, 1 - c, int(cfg["model"]["n_bins"]), str(cfg["model"]["bins"]))


@model_builder
def build_for_run(in_dim: int, cfg: dict[str, Any], kind: str = "mil", sources: Sequence[str] = ()) -> torch.nn.Module:
    """The untrained aggregator a wsi run's checkpoint describes (its model spec): MIL, or MoE-PKT over ``sources``."""
    if kind == "moe":
        return build_moe([new_mil(in_dim, cfg) for _ in sources], in_dim, cfg, list(sources))
    return new_mil(in_dim, cfg)


def new_mil(in_dim: int, cfg: dict[str, Any]) -> torch.nn.Module:
    """A fresh survival MIL from the config."""
    m = cfg["model"]
    return build_mil(in_dim, int(m["n_bins"]), int(m["hidden"]), int(m["attn_dim"]), float(m["dropout"]))


def _cfg_seed(cfg: dict[str, Any], seed: int, **train: Any) -> dict[str, Any]:
    c = copy.deepcopy(cfg)
    c["train"]["seed"] = int(seed)
    c["train"].update(train)
    return c


def cross_validate(
    cohort: Cohort,
    labels_root: str | Path,
    study: str,
    cfg: dict[str, Any],
    out_dir: str | Path,
    folds: Optional[int] = None,
) -> dict[str, Any]:
    """k-fold CV on the official splits: C-index / td-AUC per fold, mean +- sd, KM plot.

    Returns:
        ``{"study", "folds": [...], "c_index_mean", "c_index_sd", "td_auc_mean", "td_auc_sd", "km": {...}}``.
    """
    out_dir = Path(out_dir)
    splits = read_splits(labels_root, study, folds)
    rows, pooled_t, pooled_c, pooled_g = [], [], [], []
    dim = next(iter(cohort.bags.values())).shape[1]
    for k, (tr_ids, te_ids) in enumerate(splits):
        tr, te = cohort.subset(tr_ids), cohort.subset(te_ids)
        if len(tr) < 4 or len(te) < 2:
            raise MedTransferError(f"{study} fold {k}: too few patients with bags (train {len(tr)}, test {len(te)})")
        c = _cfg_seed(cfg, int(cfg["train"]["seed"]) + k)
        torch.manual_seed(int(c["train"]["seed"]))
        edges = _edges(tr, c)
        model = train_model(
            new_mil(dim, c),
            tr,
            cohort.bags,
            edges,
            c,
            out_dir / f"fold{k}",
            extra={"in_dim": dim, "kind": "mil", "study": study, "fold": k, "config": c["model"], **cohort.run_extra()},
        )
        ev = evaluate(model, te, cohort.bags, tr)
        # CV reports on the held-out fold (no validation split): its baseline is recorded there, named so
        record_baseline(model, out_dir / f"fold{k}", te, cohort.bags, tr, split="test (held-out fold)")
        record_reference(
            out_dir / f"fold{k}",
            cohort,
            [],
            no_val_reason="a cross-validation fold run holds out only its test fold (no validation patients)",
        )
        tr_risk = evaluate(model, tr, cohort.bags, tr)["risk"]
        pooled_t += [x.time for x in te]
        pooled_c += [x.censored for x in te]
        pooled_g += list((ev["risk"] > np.median(tr_risk)).astype(float))  # cut at the TRAIN median risk
        rows.append(
            {
                "fold": k,
                "c_index": ev["c_index"],
                "td_auc": ev["td_auc"],
                "n_train": len(tr),
                "n_test": ev["n"],
                "events_test": ev["events"],
            }
        )
    cm, cs = mean_sd([r["c_index"] for r in rows])
    am, asd = mean_sd([r["td_auc"] for r in rows])
    km = km_plot(
        np.array(pooled_t),
        1 - np.array(pooled_c),
        np.array(pooled_g),
        out_dir / f"km_{study}.png",
        title=f"{study} held-out folds,",
        groups=np.array(pooled_g, int),
    )
    res = {
        "study": study,
        "folds": rows,
        "c_index_mean": cm,
        "c_index_sd": cs,
        "td_auc_mean": am,
        "td_auc_sd": asd,
        "km": km,
        "protocol": __doc__.split("Protocol")[1].strip().split("\n\n")[0].replace("\n", " "),
    }
    (out_dir / "cv.json").write_text(json.dumps(res, indent=2, default=float))
    return res


# ---------------------------------------------------------------------------- Path-PKT
#: Expert name of the target's own fold model (``moe.self_expert``, Path-PKT's expert set).
SELF_EXPERT = "self (target fold model)"


def train_sources(cohorts: dict[str, Cohort], cfg: dict[str, Any], out_dir: str | Path) -> dict[str, torch.nn.Module]:
    """One survival MIL per source cancer, on all of that cancer's patients."""
    out = {}
    for i, (study, coh) in enumerate(cohorts.items()):
        dim = next(iter(coh.bags.values())).shape[1]
        c = _cfg_seed(cfg, int(cfg["train"]["seed"]) + 100 + i)
        torch.manual_seed(int(c["train"]["seed"]))
        edges = _edges(coh.cases, c)
        out[study] = train_model(
            new_mil(dim, c),
            coh.cases,
            coh.bags,
            edges,
            c,
            Path(out_dir) / f"source_{study}",
            extra={"in_dim": dim, "kind": "mil", "study": study, "config": c["model"], **coh.run_extra()},
        )
        record_reference(
            Path(out_dir) / f"source_{study}",
            coh,
            [],
            no_val_reason="a source model is trained on every patient of its study (none held out)",
        )
    return out


def pkt_compare(
    target: Cohort,
    sources: dict[str, torch.nn.Module],
    labels_root: str | Path,
    study: str,
    cfg: dict[str, Any],
    out_dir: str | Path,
    n_train: int = 40,
    folds: Optional[int] = None,
    finetune: str = "best",
    experts: str = "all",
) -> dict[str, Any]:
    """Cancer-specific vs single-source fine-tune vs MoE-PKT on a target cancer with few patients.

    For each official fold: ``n_train`` patients drawn (seeded) from the fold's train cases (0 = all
    of them, as Path-PKT); all methods see the same patients and are scored on the fold's held-out
    cases; the baseline guard's record is measured on the fold's training patients not drawn.
    ``moe.self_expert`` adds the cancer-specific model of the fold as one more expert (Path-PKT).  ``finetune``:
    ``best`` fine-tunes the one source whose frozen model ranks the fold's training patients best
    (chosen on training patients only), ``all`` fine-tunes every source, ``none`` skips it.
    ``experts``: ``all`` gives MoE-PKT every source; ``auto:K`` picks K per fold on the fold's drawn
    training patients only (:func:`select_experts`: LogME + OSBORN-style greedy selection).

    Returns:
        ``{"target", "n_train", "methods": {name: {"c_index": [...], "mean", "sd"}}, "routing": {...}}``.
    """
    out_dir = Path(out_dir)
    splits = read_splits(labels_root, study, folds)
    dim = next(iter(target.bags.values())).shape[1]
    names = list(sources)
    selection = str(experts)  # (the loop below reuses the name ``experts`` for the expert models)
    n_auto = parse_experts(selection, len(names))
    chosen: list[list[str]] = []
    res: dict[str, list[float]] = {"cancer-specific": [], "moe-pkt": []}
    if finetune == "best":
        res["finetune (best source)"] = []
    elif finetune == "all":
        for s in names:
            res[f"finetune:{s}"] = []
    picked: list[str] = []
    gates_all: list[np.ndarray] = []
    for k, (tr_ids, te_ids) in enumerate(splits):
        rng = np.random.default_rng(int(cfg["train"]["seed"]) + k)
        tr_all, te = target.subset(tr_ids), target.subset(te_ids)
        n_draw = len(tr_all) if n_train <= 0 else min(n_train, len(tr_all))  # <= 0: all (Path-PKT)
        tr = [tr_all[i] for i in sorted(rng.choice(len(tr_all), n_draw, replace=False))]
        # validation split for the baseline guard: the fold's training patients NOT drawn (never the held-out fold)
        drawn = {x.case_id for x in tr}
        val = [x for x in tr_all if x.case_id not in drawn]
        vsplit = (
            "val (fold training patients not drawn)" if val else "test (held-out fold; every training patient drawn)"
        )
        vcases = val or te
        c = _cfg_seed(cfg, int(cfg["train"]["seed"]) + k)
        edges = _edges(tr, c)
        torch.manual_seed(int(c["train"]["seed"]))
        m = train_model(
            new_mil(dim, c),
            tr,
            target.bags,
            edges,
            c,
            out_dir / f"fold{k}" / "specific",
            extra={"in_dim": dim, "kind": "mil", "study": study, **target.run_extra()},
        )
        record_baseline(m, out_dir / f"fold{k}" / "specific", vcases, target.bags, tr, vsplit)
        # the reference of `estimate`: the fold's training patients not drawn (never the held-out fold)
        spec_dir = out_dir / f"fold{k}" / "specific"
        no_val = "every training patient of the fold was drawn (--n-train): no validation patients"
        record_reference(spec_dir, target, val, te, int(c["train"]["seed"]), no_val_reason=no_val)
        res["cancer-specific"].append(evaluate(m, te, target.bags, tr)["c_index"])
        todo = []
        if finetune == "all":
            todo = [(f"finetune:{s}", s) for s in names]
        elif finetune == "best":
            score = {s: evaluate(sources[s], tr, target.bags, tr)["c_index"] for s in names}
            best = max(score, key=score.get)
            picked.append(best)
            todo = [("finetune (best source)", best)]
        for key, s in todo:
            ft = copy.deepcopy(sources[s])
            if ft.classifier.out_features != int(c["model"]["n_bins"]):  # same bin count: keep the source head
                ft.classifier = torch.nn.Linear(ft.hidden, int(c["model"]["n_bins"]))
            torch.manual_seed(int(c["train"]["seed"]))
            ft = train_model(
                ft,
                tr,
                target.bags,
                edges,
                c,
                out_dir / f"fold{k}" / f"finetune_{s}",
                extra={"in_dim": dim, "kind": "mil", "study": study, "source": s, **target.run_extra()},
            )
            record_baseline(ft, out_dir / f"fold{k}" / f"finetune_{s}", vcases, target.bags, tr, vsplit)
            record_reference(out_dir / f"fold{k}" / f"finetune_{s}", target, val, te, int(c["train"]["seed"]),
                             share_from=spec_dir, no_val_reason=no_val)  # fmt: skip
            res[key].append(evaluate(ft, te, target.bags, tr)["c_index"])
        torch.manual_seed(int(c["train"]["seed"]))
        fold_names = select_experts(sources, tr, target.bags, n_auto)["picked"] if n_auto else list(names)
        chosen.append(fold_names)
        experts, enames = [copy.deepcopy(sources[s]) for s in fold_names], list(fold_names)
        if bool(c["moe"]["self_expert"]):  # Path-PKT: the target's own fold model is one more expert
            experts.append(copy.deepcopy(m))
            enames.append(SELF_EXPERT)
        moe = build_moe(experts, dim, c, enames)
        cm = copy.deepcopy(c)
        cm["train"]["strategy"] = "linear_probe"
        moe = train_model(
            moe,
            tr,
            target.bags,
            edges,
            cm,
            out_dir / f"fold{k}" / "moe",
            head=["target", "router", "experts", "head"],
            extra={"in_dim": dim, "kind": "moe", "study": study, "sources": enames, **target.run_extra()},
        )
        record_baseline(moe, out_dir / f"fold{k}" / "moe", vcases, target.bags, tr, vsplit)
        record_reference(out_dir / f"fold{k}" / "moe", target, val, te, int(c["train"]["seed"]), share_from=spec_dir,
                         no_val_reason=no_val)  # fmt: skip
        ev = evaluate(moe, te, target.bags, tr)
        res["moe-pkt"].append(ev["c_index"])
        full = np.zeros((len(ev["gates"]), len(names) + (ev["gates"].shape[1] - len(fold_names))), np.float64)
        full[:, [names.index(n) for n in fold_names]] = ev["gates"][:, : len(fold_names)]
        full[:, len(names) :] = ev["gates"][:, len(fold_names) :]  # the self expert, when present
        gates_all.append(full)
    methods = {}
    for name, vals in res.items():
        mu, sd = mean_sd(vals)
        methods[name] = {"c_index": vals, "mean": mu, "sd": sd}
    if finetune == "all":
        per_fold = np.array([res[n] for n in res if n.startswith("finetune:")])
        mu, sd = mean_sd(list(per_fold.mean(0)))
        methods["finetune (mean over sources)"] = {"c_index": list(per_fold.mean(0)), "mean": mu, "sd": sd}
    g = np.concatenate(gates_all)
    gnames = names + [SELF_EXPERT] * (g.shape[1] - len(names))
    routing = {
        "mean_gate": {n: float(v) for n, v in zip(gnames, g.mean(0))},
        "selected_fraction": {n: float(v) for n, v in zip(gnames, (g > 0).mean(0))},
    }
    out = {
        "target": study,
        "n_train": n_train,
        "sources": names,
        "experts": gnames,
        "protocol": {k: c["moe"][k] for k in ("top_k", "routing", "balance_times_experts", "self_expert")},
        "methods": methods,
        "routing": routing,
        "finetune_source_per_fold": picked,
        "experts_per_fold": chosen,
        "expert_selection": selection,
    }
    plot_pkt(out, out_dir / f"pkt_{study}.png")
    out["png"] = str(out_dir / f"pkt_{study}.png")
    (out_dir / "pkt.json").write_text(json.dumps(out, indent=2, default=float))
    return out


def parse_experts(experts: str, n_sources: int) -> int:
    """``all`` -> 0 (every source); ``auto:K`` -> K (1 <= K <= number of sources).

    Raises:
        MedTransferError: another spelling or K out of range.
    """
    e = str(experts).strip()
    if e == "all":
        return 0
    head, _, k = e.partition(":")
    if head != "auto" or not k.strip().isdigit() or not 1 <= int(k) <= n_sources:
        raise MedTransferError(f"--experts must be all or auto:K with 1 <= K <= {n_sources} sources (got {e!r})")
    return int(k)


def select_experts(
    sources: dict[str, torch.nn.Module],
    cases: Sequence[Case],
    bags: dict[str, np.ndarray],
    k: int,
    lam: float = 0.5,
) -> dict[str, Any]:
    """Choose ``k`` source experts for a target from its TRAINING patients only (no fine-tuning).

    Each source's frozen bag embedding of the patients is scored with LogME against their
    martingale residuals (:mod:`medtransfer.apps.wsi.rank`); redundancy is the linear CKA between
    two sources' embeddings; :func:`medtransfer.shared.transferability.select.greedy_select` picks
    the team (OSBORN-style).

    Returns:
        ``{"picked": [names in pick order], "logme": {name: score}, "cka": {(a, b): sim}}``.
    """
    from medtransfer.apps.wsi.rank import bag_embeddings, martingale_residuals
    from medtransfer.shared.transferability.logme import logme
    from medtransfer.shared.transferability.select import greedy_select, linear_cka

    t, c = _arrays(cases)
    y = martingale_residuals(t, 1 - c)
    emb = {s: bag_embeddings(m, [bags[x.case_id] for x in cases]) for s, m in sources.items()}
    score = {s: logme(e, y, regression=True) for s, e in emb.items()}
    names = list(sources)
    cka = {(a, b): linear_cka(emb[a], emb[b]) for i, a in enumerate(names) for b in names[i + 1 :]}
    return {"picked": greedy_select(score, cka, k, lam), "logme": score, "cka": cka}


def build_moe(sources: Sequence[torch.nn.Module], in_dim: int, cfg: dict[str, Any], names: Sequence[str]) -> MoEPKT:
    """MoE-PKT over (frozen) source models with a fresh target MIL for the router."""
    return MoEPKT(
        list(sources),
        new_mil(in_dim, cfg),
        int(cfg["model"]["n_bins"]),
        int(cfg["moe"]["top_k"]),
        names,
        routing=str(cfg["moe"]["routing"]),
    )


def plot_pkt(res: dict[str, Any], out_png: str | Path) -> Path:
    """Bar chart of C-index per method (mean +- sd over folds) and the MoE routing weights."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meths = res["methods"]
    names = list(meths)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [2, 1]})
    a.bar(
        range(len(names)),
        [meths[n]["mean"] for n in names],
        yerr=[meths[n]["sd"] for n in names],
        color=["#888" if n == "cancer-specific" else "#c44" if n == "moe-pkt" else "#69c" for n in names],
        capsize=3,
    )
    a.set_xticks(range(len(names)), [n.replace("finetune:", "ft ") for n in names], rotation=30, ha="right", fontsize=8)
    a.set_ylabel("C-index (held-out folds)")
    a.set_ylim(0.4, 1.0)
    a.axhline(0.5, color="k", lw=0.5, ls=":")
    a.set_title(f"{res['target']}: {res['n_train']} training patients per fold")
    r = res["routing"]["mean_gate"]
    b.bar(range(len(r)), list(r.values()), color="#c44")
    b.set_xticks(range(len(r)), list(r), rotation=30, ha="right", fontsize=8)
    b.set_title("MoE-PKT mean routing weight")
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def finalize_run(
    model: torch.nn.Module,
    run_dir: str | Path,
    cohort: Cohort,
    train_cases: Sequence[Case],
    test_cases: Sequence[Case],
    extra: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """Write the held-out metrics, the training-median risk threshold and encoder info into run.json."""
    ev_tr = evaluate(model, train_cases, cohort.bags, train_cases)
    run = RunDir(run_dir)
    info = run.info()
    w = info.setdefault("wsi", {})
    w["risk_threshold"] = float(np.median(ev_tr["risk"]))
    metrics = {"train_c_index": ev_tr["c_index"], "n_train": len(train_cases)}
    if test_cases:
        ev = evaluate(model, test_cases, cohort.bags, train_cases)
        metrics.update({"test_c_index": ev["c_index"], "test_td_auc": ev["td_auc"], "n_test": len(test_cases)})
    w["metrics"] = metrics
    w.update(extra or {})
    run.write_info(info)
    return metrics


def bag_attrs(features: str | Path) -> dict[str, Any]:
    """Encoder / tiling attributes shared by the h5 bags of a folder (from the first one)."""
    import h5py

    from medtransfer.apps.wsi.features import find_bags

    for p in find_bags(features).values():
        try:
            with h5py.File(p, "r") as f:
                a = dict(f.attrs)
        except (OSError, ValueError):  # an unreadable bag (training skips it with its own error): the next one
            continue
        return {
            "encoder": str(a.get("encoder", "")) or None,
            # export must not pair the model with a random-init encoder when the bags were pretrained
            "encoder_pretrained": bool(a["pretrained"]) if "pretrained" in a else None,
            "patch_size": int(a.get("patch_size", 224)),
            "target_mpp": float(a.get("mpp", 0.5)),
            "tissue_fraction_min": float(a.get("tissue_fraction_min", 0.25)),
        }
    return {}


def train_run(
    labels_root: str | Path,
    study: str,
    out: str | Path,
    cfg: dict[str, Any],
    features: Optional[str | Path] = None,
    bags: Optional[dict[str, np.ndarray]] = None,
    fold: Optional[int] = 0,
) -> dict[str, Any]:
    """Train one exportable survival MIL on a study (train cases of official fold ``fold``, or all
    cases when ``fold`` is None), score the fold's held-out cases, and write the run folder.

    ``data.val_fraction`` of the training patients (seeded) are held out as the validation split:
    not fitted, and where the trivial baseline (C-index 0.5 / age-only Cox) is recorded for the
    export guard.  With ``data.val_fraction=0`` every training patient is fitted (Path-PKT) and the
    baseline is recorded on the held-out fold, named so.

    Returns:
        Metrics (train / val / test C-index, counts) and ``baseline`` (the record).
    """
    coh = load_cohort(labels_root, study, features, str(cfg["data"]["endpoint"]), bags)
    if fold is None:
        tr, te = coh.cases, []
    else:
        folds = read_splits(labels_root, study)
        if not 0 <= int(fold) < len(folds):
            raise ConfigError(f"--fold {fold}: study '{study}' has folds 0 to {len(folds) - 1} (or -1 for all cases)")
        tr_ids, te_ids = folds[fold]
        tr, te = coh.subset(tr_ids), coh.subset(te_ids)
    tr, val = split_val(tr, float(cfg["data"]["val_fraction"]), int(cfg["train"]["seed"]))
    dim = next(iter(coh.bags.values())).shape[1]
    torch.manual_seed(int(cfg["train"]["seed"]))
    edges = _edges(tr, cfg)
    model = train_model(
        new_mil(dim, cfg),
        tr,
        coh.bags,
        edges,
        cfg,
        out,
        extra={"in_dim": dim, "kind": "mil", "study": study, "fold": fold},
    )
    extra = (bag_attrs(features) if features else {}) | coh.run_extra()
    extra["val_ids"] = [c.case_id for c in val]  # not fitted: `wsi evaluate --split val`
    metrics = finalize_run(model, out, coh, tr, te, extra)
    record_reference(
        out,
        coh,
        val,
        te,
        int(cfg["train"]["seed"]),
        no_val_reason="data.val_fraction=0 holds out no validation patients",
    )
    if val:
        base = record_baseline(model, out, val, coh.bags, tr, "val")
    elif te:
        base = record_baseline(model, out, te, coh.bags, tr, "test (held-out fold; data.val_fraction=0)")
    else:
        base = None  # all cases fitted, nothing held out: no baseline can be measured
    if base:
        metrics.update({"val_c_index": base["model"], "n_val": base["n"], "baseline": base})
    if coh.errors:
        _write_errors(Path(out) / "errors.csv", coh.errors)
    return metrics


def _write_errors(path: Path, rows: list[dict[str, str]]) -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["study", "case_id", "slide_id", "error"])
        w.writeheader()
        w.writerows(rows)
    return path
