"""Stage 1 (view), stage 2 (grade, encoder from the view model), adding a view, and the transfer-vs-scratch comparison.

All training goes through :func:`medtransfer.shared.finetune.fit`.  Validation uses the manifest's
``val`` split; test metrics are computed once, after training, on ``test``.

CACTUS protocol (Elmekki et al. 2025, arXiv:2503.05604) is the default: grading is *fine-tuned*
from the view model (transfer, ``grade.view_weight=0``; the multi-task variant is
``grade.view_weight>0``), and a new view is added to a trained view model by fine-tuning
(:func:`add_view`, the paper's PSMV experiment).  Every run records its trivial baseline on the
validation split in ``run.json["baseline"]`` (majority training view for accuracy, mean training
grade for MSE), which the export guard reads.
"""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch.utils.data import TensorDataset

from medtransfer.apps.cardiac.io import read_frames
from medtransfer.apps.cardiac.model import build_model
from medtransfer.apps.cardiac.preprocess import DEFAULT_PREPROC, crop_sector, normalise
from medtransfer.apps.cardiac.synthetic import VIEWS
from medtransfer.shared.config import resolve_config, save_yaml
from medtransfer.shared.export.guard import baseline_record
from medtransfer.shared.manifest import read_manifest
from medtransfer.shared.rundir import RunDir, model_spec
from medtransfer.shared.utils.errors import InputError, MedTransferError
from medtransfer.shared.utils.seed import seed_everything

#: the CACTUS image-quality grades (the importer refuses others)
GRADE_RANGE = (0.0, 10.0)

DEFAULTS: dict[str, Any] = {
    # pretrained: "" (none) or a local weight file; views: the view classes, in head order
    # (a subset of VIEWS, e.g. without PSMV for the paper's add-a-view experiment)
    "model": {"backbone": "resnet18", "pretrained": "", "views": list(VIEWS)},
    "preprocessing": {**DEFAULT_PREPROC, "size": 112},
    # init: view | imagenet | scratch.  view_weight 0 = CACTUS pure transfer (the view head is not
    # trained in stage 2); > 0 = multi-task (one bundle answers view and grade).
    "grade": {"init": "view", "view_weight": 0.0},
    "ood": {"quantile": 0.05},  # max-softmax threshold = this quantile of in-distribution validation frames
    "train": {
        "epochs": 6,
        "batch_size": 32,
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "patience": 0,
        "seed": 0,
        "strategy": "full",
        "progress": True,
    },
}


def make_config(
    recipe: str | Path | None = None, overrides: Iterable[str] | dict[str, Any] | None = None
) -> dict[str, Any]:
    """Resolve the cardiac config (defaults <- recipe <- ``--set`` overrides)."""
    from medtransfer.shared.config import check_ranges
    from medtransfer.shared.finetune import TRAIN_DEFAULTS

    schema = copy.deepcopy(DEFAULTS)
    schema["train"] = {**TRAIN_DEFAULTS, **schema["train"]}
    cfg = resolve_config(schema, recipe, overrides)
    # before any data is read: size 0 was a traceback in letterbox, 100000 ran out of memory, an
    # ood.quantile of 2 failed after the whole training
    check_ranges(cfg, {"size": ("ge", 16)}, "preprocessing")
    check_ranges(cfg, {"size": ("le", 1024)}, "preprocessing")
    check_ranges(cfg, {"quantile": ("gt", 0.0)}, "ood")
    check_ranges(cfg, {"quantile": ("lt", 0.5)}, "ood")
    return cfg


def run_views(cfg: dict[str, Any]) -> list[str]:
    """The view classes of a config (``model.views``), checked against the known CACTUS views.

    Raises:
        ConfigError: an unknown or repeated view, or fewer than 2 views.
    """
    from medtransfer.shared.utils.errors import ConfigError

    views = [str(v) for v in (cfg.get("model", {}).get("views") or VIEWS)]
    bad = [v for v in views if v not in VIEWS]
    if bad or len(set(views)) != len(views) or len(views) < 2:
        raise ConfigError(
            f"model.views must be 2 or more distinct views of {', '.join(VIEWS)} (got {', '.join(views) or 'none'})"
        )
    return views


def load_split(
    manifest: str | Path,
    split: str,
    params: dict[str, Any],
    need_grade: bool = False,
    views: list[str] | tuple[str, ...] = VIEWS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Preprocess one split of a manifest (first frame of each file).

    Args:
        views: the classes; rows with another label are skipped, indices follow this order.

    Returns:
        (crops uint8 (N, S, S), view indices (N,), grades float32 (N,), NaN where absent).
    """
    from rich.progress import track

    recs = [r for r in read_manifest(manifest) if r.split == split]
    if need_grade:
        recs = [r for r in recs if r.extra.get("grade", "") != ""]
    views = list(views)
    folded = {v.strip().upper(): v for v in views}
    for r in recs:  # 'a4c' or 'PL ' is a typo of a class, not another class: say so instead of dropping it
        if r.label not in views and r.label.strip().upper() in folded:
            raise InputError(
                manifest, f"{r.rel}: label {r.label!r} is written differently from {folded[r.label.strip().upper()]!r}"
            )
    other = sorted({r.label for r in recs if r.label not in views})
    if other:
        n = sum(r.label not in views for r in recs)
        sys.stderr.write(
            f"{manifest}: {n} row(s) of split '{split}' with labels the model has no class for "
            f"({', '.join(map(repr, other[:4]))}) left out\n"
        )
    recs = [r for r in recs if r.label in views]
    if not recs:
        raise InputError(manifest, f"no rows of split '{split}' labelled with the model's views")
    crops, idx, grades = [], [], []
    for r in recs:  # grades checked before any image is read
        g = r.extra.get("grade", "")
        try:
            gv = float(g) if g != "" else np.nan
        except ValueError:
            raise InputError(manifest, f"{r.rel}: grade {g[:20]!r} is not a number") from None
        if g != "" and not (math.isfinite(gv) and GRADE_RANGE[0] <= gv <= GRADE_RANGE[1]):
            raise InputError(manifest, f"{r.rel}: grade {g[:20]} is outside {GRADE_RANGE[0]}-{GRADE_RANGE[1]}")
        grades.append(gv)
    for r in track(recs, description=f"preprocess {split}", transient=True):
        frames, _ = read_frames(r.path, max_frames=1)
        c, _ = crop_sector(frames[0], params)
        crops.append(c)
        idx.append(views.index(r.label))
    return np.stack(crops), np.asarray(idx, np.int64), np.asarray(grades, np.float32)


def _dataset(crops: np.ndarray, views: np.ndarray, grades: np.ndarray, params: dict[str, Any]) -> TensorDataset:
    return TensorDataset(
        torch.from_numpy(normalise(crops, params)),
        torch.from_numpy(views),
        torch.from_numpy(np.nan_to_num(grades, nan=0.0)),
    )


def _forward(model: torch.nn.Module, batch: Any) -> tuple[Any, Any]:
    x, v, g = batch
    logits, grade = model(x)
    return {"view_logits": logits, "grade": grade}, {"view": v, "grade": g}


def view_metrics(logits: np.ndarray, y: np.ndarray, views: list[str] | tuple[str, ...] = VIEWS) -> dict[str, float]:
    """Accuracy, macro-F1 and per-class F1 (classes in ``views`` order)."""
    from sklearn.metrics import accuracy_score, f1_score

    pred = np.asarray(logits).argmax(1)
    labs = list(range(len(views)))
    out = {
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, average="macro", labels=labs, zero_division=0)),
    }
    per = f1_score(y, pred, average=None, labels=labs, zero_division=0)
    out.update({f"f1_{v}": float(s) for v, s in zip(views, per)})
    return out


def metrics_for(views: list[str] | tuple[str, ...] = VIEWS):
    """The engine's ``metric_fn`` for a run with these view classes."""

    def metrics(out: dict[str, np.ndarray], tgt: dict[str, np.ndarray]) -> dict[str, float]:
        m = view_metrics(out["view_logits"], tgt["view"], views)
        err = out["grade"] - tgt["grade"]
        m.update(mse=float(np.mean(err**2)), mae=float(np.mean(np.abs(err))))
        return m

    return metrics


_metrics = metrics_for(VIEWS)


def trivial_baselines(
    train_views: np.ndarray, train_grades: np.ndarray, views: list[str] | tuple[str, ...]
) -> dict[str, Any]:
    """The predictions of doing nothing, fixed from the training split.

    Returns:
        ``{"majority_view": name, "mean_grade": float or None}`` (None when no training grades).
    """
    counts = np.bincount(np.asarray(train_views, np.int64), minlength=len(views))
    g = np.asarray(train_grades, np.float64)
    g = g[np.isfinite(g)]
    return {"majority_view": views[int(counts.argmax())], "mean_grade": float(g.mean()) if g.size else None}


def baseline_metrics(
    trivial: dict[str, Any], y_view: np.ndarray, y_grade: np.ndarray, views: list[str] | tuple[str, ...], grade: bool
) -> dict[str, Any]:
    """The trivial baselines scored on one split's targets.

    Returns:
        ``{"view": {"name", "accuracy"}}`` plus ``"grade": {"name", "mse", "mae"}`` when ``grade``.
    """
    maj = str(trivial["majority_view"])
    out: dict[str, Any] = {
        "view": {
            "name": f"majority view '{maj}'",
            "accuracy": float(np.mean(np.asarray(y_view) == views.index(maj))) if maj in views else 0.0,
        }
    }
    if grade and trivial.get("mean_grade") is not None:
        mg = float(trivial["mean_grade"])
        err = np.asarray(y_grade, np.float64) - mg
        out["grade"] = {
            "name": f"mean training grade {mg:.3f}",
            "mse": float(np.mean(err**2)),
            "mae": float(np.mean(np.abs(err))),
        }
    return out


def _loss(view_weight: float, grade_weight: float):
    ce = torch.nn.CrossEntropyLoss()

    def loss(out: dict[str, torch.Tensor], tgt: dict[str, torch.Tensor]) -> torch.Tensor:
        total = out["grade"].new_zeros(())
        if view_weight:
            total = total + view_weight * ce(out["view_logits"], tgt["view"])
        if grade_weight:
            total = total + grade_weight * torch.nn.functional.mse_loss(out["grade"], tgt["grade"]) / 10.0
        return total

    return loss


def _pretrained(cfg: dict[str, Any]) -> str | bool:
    p = str(cfg["model"].get("pretrained") or "")
    return p if p else False


def _calibrate(
    model: torch.nn.Module, val_ds: TensorDataset, quantile: float, views: list[str] | tuple[str, ...] = VIEWS
) -> dict[str, float]:
    """Max-softmax and energy thresholds from in-distribution (non-Random) validation images."""
    from medtransfer.shared.finetune import predict_arrays

    out, tgt = predict_arrays(model, val_ds, _forward, batch_size=64, device="cpu")
    logits = out["view_logits"].astype(np.float64)
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    keep = tgt["view"] != (views.index("Random") if "Random" in views else -1)
    msp = p.max(1)[keep]
    energy = -(logits.max(1) + np.log(np.exp(z).sum(1)))[keep]
    if msp.size == 0:
        return {"msp_threshold": 0.5, "energy_threshold": 0.0, "quantile": quantile, "n": 0}
    return {
        "msp_threshold": float(np.quantile(msp, quantile)),
        "energy_threshold": float(np.quantile(energy, 1 - quantile)),
        "quantile": quantile,
        "n": int(msp.size),
    }


def _run(
    manifest: Path,
    out: Path,
    cfg: dict[str, Any],
    task: str,
    model: torch.nn.Module,
    view_weight: float,
    grade_weight: float,
    monitor: str,
    mode: str,
    extra: dict[str, Any],
) -> dict[str, Any]:
    from medtransfer.shared.finetune import fit

    params = cfg["preprocessing"]
    views = run_views(cfg)
    need_grade = grade_weight > 0
    tr = load_split(manifest, "train", params, need_grade, views)
    va = load_split(manifest, "val", params, need_grade, views)
    if view_weight and np.unique(tr[1]).size < 2:
        raise InputError(
            manifest, f"split 'train' has only view {views[int(tr[1][0])]!r}; view training needs at least 2 views"
        )
    if need_grade and np.unique(tr[2]).size < 2:
        raise InputError(manifest, "split 'train' has a single grade value; grade training needs varied grades")
    tr_ds, va_ds = _dataset(*tr, params), _dataset(*va, params)
    counts = np.bincount(tr[1], minlength=len(views)).astype(np.float64)
    weights = (1.0 / np.maximum(counts, 1))[tr[1]] if view_weight else None
    res = fit(
        model,
        tr_ds,
        va_ds,
        cfg=cfg,
        run_dir=out,
        app="cardiac",
        task=task,
        loss_fn=_loss(view_weight, grade_weight),
        metric_fn=metrics_for(views),
        forward_fn=_forward,
        head=["view_head", "grade_head"],
        monitor=monitor,
        mode=mode,
        extra_state={"labels": views, "preprocessing": params, **extra},
        model_spec=model_spec(
            builder="medtransfer.apps.cardiac.model:CardiacNet",
            backbone=str(cfg["model"]["backbone"]),
            n_views=len(views),
        ),
        sampler_weights=weights,
        data_files=[manifest],
    )
    run = RunDir(out)
    best = run.load_checkpoint("best")
    model.load_state_dict(best["model"])
    ood = _calibrate(model, va_ds, float(cfg["ood"]["quantile"]), views)
    # the trivial baselines, fixed on train, scored on the same validation cases as the model
    trivial = trivial_baselines(tr[1], tr[2], views)
    vbase = baseline_metrics(trivial, va[1], va[2], views, need_grade)
    if need_grade:
        base = baseline_record(
            "mse", res.best_metrics.get("val_mse", float("nan")), vbase["grade"]["mse"], vbase["grade"]["name"], False
        )
    else:
        base = baseline_record(
            "accuracy",
            res.best_metrics.get("val_accuracy", float("nan")),
            vbase["view"]["accuracy"],
            vbase["view"]["name"],
        )
    test = evaluate(model, manifest, params, out, need_grade=need_grade, views=views, trivial=trivial)
    run.update_info(
        labels=views,
        preprocessing=params,
        manifest=str(Path(manifest).resolve()),  # the validation cases of `estimate`'s reference (export)
        ood=ood,
        val=res.best_metrics,
        test=test,
        trivial=trivial,
        baseline=base,
        val_baselines=vbase,
        **extra,
    )
    return {"run_dir": str(out), "val": res.best_metrics, "test": test, "ood": ood, "baseline": base}


def train_view(
    manifest: str | Path,
    out: str | Path,
    overrides: Iterable[str] | dict[str, Any] | None = None,
    recipe: str | Path | None = None,
) -> dict[str, Any]:
    """Stage 1: view classification (6 classes) from the registry backbone.

    Returns:
        ``{"run_dir", "val", "test", "ood"}`` (test: accuracy, macro-F1, per-class F1).
    """
    cfg = make_config(recipe, overrides)
    seed_everything(int(cfg["train"].get("seed", 0)))  # the initial weights are the run's seed's
    model = build_model(cfg, pretrained=_pretrained(cfg))
    return _run(
        Path(manifest),
        Path(out),
        cfg,
        "view",
        model,
        1.0,
        0.0,
        "val_accuracy",
        "max",
        {"stage": "view", "init": "imagenet" if _pretrained(cfg) else "scratch"},
    )


def train_grade(
    manifest: str | Path,
    out: str | Path,
    init_run: str | Path | None = None,
    overrides: Iterable[str] | dict[str, Any] | None = None,
    recipe: str | Path | None = None,
) -> dict[str, Any]:
    """Stage 2: grade regression 0-10, the encoder initialised from the stage-1 view model.

    ``grade.init`` = ``view`` (needs ``init_run``: the paper's transfer), ``imagenet`` (the
    ``model.pretrained`` file) or ``scratch``.  ``grade.view_weight`` > 0 keeps training the view
    head too, so one exported model answers both (0 = pure grade regression).
    """
    cfg = make_config(recipe, overrides)
    seed_everything(int(cfg["train"].get("seed", 0)))  # the new head's initial weights are the run's seed's
    init = str(cfg["grade"]["init"])
    if init == "view":
        if not init_run:
            raise MedTransferError("grade.init=view needs the stage-1 run (--init RUN_DIR)")
        st = RunDir(init_run).require_app("cardiac").load_checkpoint("best")
        vcfg = st["config"]
        cfg["model"] = dict(vcfg["model"])
        cfg["preprocessing"] = dict(vcfg["preprocessing"])
        model = build_model(cfg)
        model.load_state_dict(st["model"])
    elif init == "imagenet":
        if not _pretrained(cfg):
            raise MedTransferError("grade.init=imagenet needs model.pretrained=<local weight file>")
        model = build_model(cfg, pretrained=_pretrained(cfg))
    elif init == "scratch":
        model = build_model(cfg)
    else:
        raise MedTransferError(f"grade.init must be view, imagenet or scratch (got {init!r})")
    vw = float(cfg["grade"]["view_weight"])
    return _run(
        Path(manifest),
        Path(out),
        cfg,
        "grade",
        model,
        vw,
        1.0,
        "val_mse",
        "min",
        {"stage": "grade", "init": init, "init_run": str(init_run or "")},
    )


def add_view(
    manifest: str | Path,
    init_run: str | Path,
    view: str,
    out: str | Path,
    overrides: Iterable[str] | dict[str, Any] | None = None,
    recipe: str | Path | None = None,
) -> dict[str, Any]:
    """Add a view class to a trained view model by fine-tuning (the CACTUS paper's PSMV experiment).

    The stage-1 run's classes are kept in their order, ``view`` is appended
    (:func:`~medtransfer.apps.cardiac.model.extend_view_head`), and the whole network is fine-tuned
    on the manifest's rows of all classes (old and new) with the view loss.  Preprocessing and
    backbone come from the stage-1 run; ``train.*`` from ``recipe`` / ``overrides``.

    Args:
        manifest: manifest CSV with rows of the old views and of ``view``.
        init_run: a finished view run (stage ``view`` or ``add_view``).
        view: the new class, one of the CACTUS views the run does not have.
        out: new run folder.

    Returns:
        ``{"run_dir", "val", "test", "ood", "baseline"}`` as :func:`train_view`.

    Raises:
        InputError: ``init_run`` is not a finished view run.
        ConfigError: ``view`` is unknown or already a class of the run.
    """
    from medtransfer.apps.cardiac.model import extend_view_head
    from medtransfer.shared.utils.errors import ConfigError

    run = RunDir(init_run).require_app("cardiac")
    if not run.has_checkpoint("best"):
        raise InputError(init_run, "not a finished view run (no checkpoints/best.pt)")
    if str(run.info().get("stage", "view")) not in ("view", "add_view"):
        raise InputError(init_run, "is a grade run; add-view extends a view run (--stage view)")
    st = run.load_checkpoint("best")
    vcfg = st["config"]
    old = run_views(vcfg)
    if view not in VIEWS:
        raise ConfigError(f"--view must be one of {', '.join(VIEWS)} (got '{view}')")
    if view in old:
        raise ConfigError(f"view '{view}' is already a class of {init_run} ({', '.join(old)})")
    cfg = make_config(recipe, overrides)
    cfg["model"] = {**dict(vcfg["model"]), "views": old + [view], "pretrained": ""}
    cfg["preprocessing"] = dict(vcfg["preprocessing"])
    model = build_model({"model": {**cfg["model"], "views": old}})
    model.load_state_dict(st["model"])
    torch.manual_seed(int(cfg["train"].get("seed", 0)))
    extend_view_head(model, 1)
    return _run(
        Path(manifest),
        Path(out),
        cfg,
        "view",
        model,
        1.0,
        0.0,
        "val_accuracy",
        "max",
        {"stage": "add_view", "init": "view", "init_run": str(init_run), "added_view": view, "old_views": old},
    )


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    manifest: str | Path,
    params: dict[str, Any],
    out: Path,
    need_grade: bool = False,
    views: list[str] | tuple[str, ...] = VIEWS,
    trivial: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Test-split metrics and plots (confusion matrix PNG; grade scatter PNG when graded).

    Args:
        views: the run's view classes.
        trivial: :func:`trivial_baselines` of the training split; its scores go under ``baseline``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    from medtransfer.shared.finetune import predict_arrays

    try:
        te = load_split(manifest, "test", params, need_grade, views)
    except InputError:
        return {}
    o, t = predict_arrays(model, _dataset(*te, params), _forward, batch_size=64, device="cpu")
    m: dict[str, Any] = metrics_for(views)(o, t)
    if not need_grade:
        m.pop("mse"), m.pop("mae")
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ConfusionMatrixDisplay.from_predictions(
        t["view"],
        o["view_logits"].argmax(1),
        labels=list(range(len(views))),
        display_labels=list(views),
        ax=ax,
        colorbar=False,
    )
    ax.set_title(f"view, test acc {m['accuracy']:.3f}")
    fig.tight_layout()
    fig.savefig(out / "confusion_matrix.png", dpi=100)
    plt.close(fig)
    if need_grade:
        fig, ax = plt.subplots(figsize=(4.5, 4))
        ax.scatter(t["grade"], o["grade"], s=10, alpha=0.6)
        ax.plot([0, 10], [0, 10], "k--", lw=1)
        ax.set_xlabel("true grade")
        ax.set_ylabel("predicted grade")
        ax.set_title(f"grade, test MSE {m['mse']:.2f} MAE {m['mae']:.2f}")
        fig.tight_layout()
        fig.savefig(out / "grade_scatter.png", dpi=100)
        plt.close(fig)
    m["n_test"] = int(len(te[1]))
    if trivial:
        m["baseline"] = baseline_metrics(trivial, t["view"], t["grade"], views, need_grade)
    (out / "test_metrics.json").write_text(json.dumps(m, indent=2))
    return m


def compare(
    manifest: str | Path, view_run: str | Path, out: str | Path, overrides: Iterable[str] | dict[str, Any] | None = None
) -> dict[str, Any]:
    """Grade regression at equal budget: encoder from the view model vs from ImageNet (if
    ``model.pretrained`` is set) or from scratch.  Pure grade loss (view_weight 0) in both arms.

    Returns:
        ``{"view_init": test metrics, "<baseline>_init": test metrics, "plot": png}``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not RunDir(view_run).has_checkpoint("best"):  # refuse before any folder is made
        raise InputError(view_run, "not a finished view run (no checkpoints/best.pt)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = make_config(overrides=overrides)
    baseline = "imagenet" if _pretrained(base) else "scratch"
    ov = dict(overrides) if isinstance(overrides, dict) else {}
    results: dict[str, Any] = {}
    for arm in ("view", baseline):
        cfg_ov = list(overrides) if overrides and not isinstance(overrides, dict) else []
        cfg_ov += [f"grade.init={arm}", "grade.view_weight=0"]
        if ov:
            from medtransfer.shared.config import merge

            cfg_ov = merge(ov, {"grade": {"init": arm, "view_weight": 0.0}})  # type: ignore[assignment]
        r = train_grade(manifest, out / f"{arm}_init", init_run=view_run if arm == "view" else None, overrides=cfg_ov)
        results[f"{arm}_init"] = {k: r["test"].get(k) for k in ("mse", "mae", "n_test")}
        results[f"{arm}_init"]["val_mse"] = r["val"].get("val_mse")
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    names = list(results)
    ax.bar(names, [results[n]["mse"] for n in names], color=["tab:blue", "tab:gray"])
    ax.set_ylabel("test MSE (grade 0-10)")
    ax.set_title("stage-2 init: view model vs " + baseline)
    fig.tight_layout()
    fig.savefig(out / "transfer_vs_baseline.png", dpi=100)
    plt.close(fig)
    results["plot"] = str(out / "transfer_vs_baseline.png")
    (out / "comparison.json").write_text(json.dumps(results, indent=2, default=float))
    save_yaml(base, out / "config.yaml")
    return results
