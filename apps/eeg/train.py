"""Training and recording-level evaluation of braindecode models through the shared engine.

``train`` reads a manifest, preprocesses (cached), builds the model from the shared registry
(``model.cropped: true``: the paper's cropped decoding, see :mod:`medtransfer.apps.eeg.cropped`),
optionally initialises it from a source run (``strict=False``, mismatching tensors skipped, as the
paper's transfer does) and calls :func:`medtransfer.shared.finetune.fit`.  ``evaluate`` averages
window probabilities per recording and reports balanced accuracy and AUROC beside the trivial
baseline (the majority training class: balanced accuracy 0.5, AUROC 0.5), which ``train`` also
records in ``run.json["baseline"]`` on the validation split for the export guard.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from medtransfer.apps.eeg.cropped import CROPPED_MODELS, cropped_loss, make_dense, n_preds_per_input, window_logits
from medtransfer.apps.eeg.data import (
    LABELS,
    WindowDataset,
    aggregate,
    cache_root,
    load_split,
    recording_metrics,
)
from medtransfer.apps.eeg.io import DATA_DEFAULTS, pp_config, window_samples
from medtransfer.shared.export.guard import baseline_record
from medtransfer.shared.rundir import RunDir, model_builder, model_spec
from medtransfer.shared.utils.errors import InputError, MedTransferError

APP, TASK = "eeg", "pathology"
MODELS = ("shallow", "deep4", "tcn", "eegnet")


def defaults() -> dict[str, Any]:
    """The eeg recipe: ``data`` (preprocessing), ``model``, ``train`` (paper optimiser settings)."""
    from medtransfer.shared.finetune import TRAIN_DEFAULTS

    train = copy.deepcopy(TRAIN_DEFAULTS)
    train.update(lr=6.25e-4, weight_decay=5e-4, batch_size=64, epochs=10, scheduler="cosine", patience=5)
    train["class_weight"] = "none"  # none | balanced (cross-entropy weights n / (2 n_class) on training windows)
    return {
        "data": copy.deepcopy(DATA_DEFAULTS),
        "model": {
            "name": "shallow",
            "drop_prob": 0.5,
            "cropped": False,  # true: cropped decoding (dense predictions, cropped loss), deep4 / shallow only
            "kwargs": {},
        },  # extra braindecode constructor arguments, e.g. {F1: 16, D: 2} for eegnet
        "train": train,
    }


def make_config(
    recipe: str | Path | None = None, overrides: Iterable[str] | Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Defaults <- recipe <- overrides (validated)."""
    from medtransfer.shared.config import resolve_config

    cfg = resolve_config(defaults(), recipe, overrides)
    pp_config(cfg["data"])  # validates
    if cfg["model"]["name"] not in MODELS:
        raise MedTransferError(f"model.name '{cfg['model']['name']}' is not one of {', '.join(MODELS)}")
    if cfg["model"].get("cropped") and cfg["model"]["name"] not in CROPPED_MODELS:
        raise MedTransferError(
            f"model.cropped needs one of {', '.join(CROPPED_MODELS)} (got model.name '{cfg['model']['name']}')"
        )
    if str(cfg["train"].get("class_weight", "none")) not in ("none", "balanced"):
        raise MedTransferError(f"train.class_weight must be none or balanced (got '{cfg['train']['class_weight']}')")
    if float(cfg["data"].get("window_stride_seconds", 0) or 0) < 0:
        raise MedTransferError("data.window_stride_seconds must be >= 0 (0 = no overlap)")
    return cfg


@model_builder
def build_model(cfg: Mapping[str, Any]):
    """The braindecode network of a config, from the shared registry.

    With ``model.cropped`` the network is built with ``final_conv_length=1`` (unless the recipe says
    otherwise) and made dense: its output is ``[batch, classes, n_preds_per_input]``.
    """
    import warnings

    with warnings.catch_warnings():  # braindecode's import-time deprecation noise (MNE montage names)
        warnings.simplefilter("ignore")
        import braindecode.models  # noqa: F401
    from medtransfer.shared.registry import create_model

    pp = pp_config(cfg["data"])
    name = cfg["model"]["name"]
    n_chans = len(pp["channels"])
    if n_chans == 1 and name in ("shallow", "deep4"):
        raise MedTransferError(f"model '{name}' (braindecode) does not build with one channel: use eegnet or tcn")
    kw: dict[str, Any] = {}
    if name in ("shallow", "deep4", "eegnet", "tcn"):
        kw["drop_prob"] = float(cfg["model"].get("drop_prob", 0.5))
    kw.update(dict(cfg["model"].get("kwargs") or {}))
    cropped = bool(cfg["model"].get("cropped"))
    if cropped:
        kw.setdefault("final_conv_length", 1)
    model = create_model(
        name, n_chans=n_chans, n_outputs=len(LABELS), n_times=window_samples(pp), sfreq=float(pp["sfreq"]), **kw
    )
    return make_dense(model) if cropped else model


def _loss(out, y):
    import torch.nn.functional as F

    return F.cross_entropy(out, y)


def class_weights(targets: np.ndarray) -> np.ndarray:
    """Balanced cross-entropy weights ``n / (n_classes_present * n_c)`` (1 for a class absent from training)."""
    t = np.asarray(targets)
    t = t[t >= 0]
    n = np.bincount(t, minlength=len(LABELS)).astype(float)
    k = max(1, int((n > 0).sum()))
    return np.where(n > 0, len(t) / (k * np.maximum(n, 1)), 1.0)


def _weighted_loss(weights: np.ndarray):
    def loss(out, y):
        import torch
        import torch.nn.functional as F

        return F.cross_entropy(out, y, weight=torch.as_tensor(weights, dtype=out.dtype, device=out.device))

    return loss


def train_stride(cfg: Mapping[str, Any]) -> int:
    """Samples between training-window starts (``data.window_stride_seconds``; 0 = no overlap)."""
    pp = pp_config(cfg["data"])
    st = float(cfg["data"].get("window_stride_seconds", 0) or 0)
    return int(round(st * float(pp["sfreq"]))) if st > 0 else 0


def _window_metrics(out: np.ndarray, y: np.ndarray) -> dict[str, float]:
    p = _softmax(window_logits(out))[:, 1]  # dense (cropped) outputs: mean log-probability over the crops
    m = recording_metrics(y, p)
    return {"balanced_accuracy": m["balanced_accuracy"], "auroc": m["auroc"]}


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def train(
    manifest: str | Path,
    run_dir: str | Path,
    cfg: Mapping[str, Any] | None = None,
    init: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (from scratch or from a source run) on the manifest's train split, validate on val.

    Args:
        manifest: generic manifest (``path,label[,split,group]``); labels normal/abnormal.
        run_dir: output run folder.
        cfg: resolved config (see :func:`resolve`); default recipe when None.
        init: a source run folder (its ``checkpoints/best.pt``) or a weights file.
        progress: progress bars.

    Returns:
        dict with ``run_dir``, ``best_epoch``, ``val`` (recording-level metrics), ``init`` report.
    """
    import torch

    from medtransfer.shared.finetune import fit
    from medtransfer.shared.registry.weights import load_pretrained

    manifest = Path(manifest)
    cfg = copy.deepcopy(dict(cfg or make_config()))
    if not cfg["data"].get("cache_dir"):
        cfg["data"]["cache_dir"] = str(manifest.resolve().parent / ".eeg_cache")
    else:  # recorded absolute: a relative one followed whatever folder the run was later evaluated from
        cfg["data"]["cache_dir"] = str(Path(cfg["data"]["cache_dir"]).absolute())
    cfg["train"]["progress"] = bool(progress and cfg["train"].get("progress", True))
    torch.manual_seed(int(cfg["train"]["seed"]))
    init_sd = _read_init(Path(init)) if init else None  # verified before any data is read
    splits, errors = load_split(manifest, cfg["data"], ["train", "val"], progress=progress)
    if not splits["train"]:
        raise InputError(manifest, "no usable training recordings (see the import report / errors)")
    classes = sorted({str(r.label) for r in splits["train"]})
    if len(classes) < 2:
        raise InputError(
            manifest, f"split 'train' has only class {classes[0]!r}; training needs normal and abnormal recordings"
        )
    n_by = {c: sum(str(r.label) == c for r in splits["train"]) for c in LABELS}
    majority = max(LABELS, key=lambda c: (n_by[c], c == "normal"))  # ties -> normal
    mw = int(cfg["data"].get("max_windows_per_recording", 0) or 0)
    model = build_model(cfg)
    cropped = bool(cfg["model"].get("cropped"))
    stride = train_stride(cfg)
    n_preds = 0
    if cropped:
        pp0 = pp_config(cfg["data"])
        n_preds = n_preds_per_input(model, len(pp0["channels"]), window_samples(pp0))
        stride = stride or n_preds  # the authors' window_stride_samples=n_preds_per_input (crops tile the signal)
    train_ds = WindowDataset(splits["train"], mw, stride=stride)  # overlapping when a stride is set
    val_ds = WindowDataset(splits["val"], mw) if splits["val"] else None  # evaluation windows: no overlap
    balanced = str(cfg["train"].get("class_weight", "none")) == "balanced"
    weights = class_weights(train_ds.targets) if balanced else None
    if cropped:
        loss_fn = cropped_loss(weights)
    else:
        loss_fn = _weighted_loss(weights) if weights is not None else _loss
    init_report: dict[str, Any] = {}
    if init:
        src = Path(init)
        try:
            info = load_pretrained(model, init_sd, strict=False)
        except MedTransferError as e:  # name the --init source, not "the starting weights"
            raise InputError(src, str(e).split(": ", 1)[-1]) from None
        init_report = {
            "source": str(src),
            "missing": len(info["missing"]),
            "skipped": len(info["skipped"]),
            "loaded_share": info["loaded_share"],  # how much of the model the source gave
        }
    pp = pp_config(cfg["data"])
    extra = {"labels": list(LABELS), "preprocessing": pp, "model_name": cfg["model"]["name"]}
    res = fit(
        model,
        train_ds,
        val_ds,
        cfg=cfg,
        run_dir=Path(run_dir),
        app=APP,
        task=TASK,
        loss_fn=loss_fn,
        metric_fn=_window_metrics,
        head=["final_layer"],
        monitor="val_loss",
        mode="min",
        extra_state=extra,
        data_files=[manifest],
        model_spec=model_spec(
            builder="medtransfer.apps.eeg.train:build_model",
            cfg={"data": pp_config(cfg["data"]), "model": dict(cfg["model"])},  # what it is, not where it ran
        ),
    )
    run_dir = Path(run_dir)
    run = RunDir(run_dir)
    info = run.info()
    info.update(
        {
            "manifest": str(manifest.resolve()),
            "init": init_report,
            "model_name": cfg["model"]["name"],
            "n_train_recordings": len(splits["train"]),
            "n_val_recordings": len(splits["val"]),
            "n_train_windows": len(train_ds),
            "cropped": cropped,
            "n_preds_per_input": n_preds,
            "majority_class": majority,
            "preprocess_errors": errors,
            "cache": str(cache_root(cfg["data"], manifest)),
        }
    )
    run.write_info(info)
    val: dict[str, Any] = {}
    if splits["val"]:
        val = evaluate(run_dir, manifest, split="val", progress=False, write=False, threshold=0.5)
        info["threshold"] = val["best_threshold"]
        info["threshold_source"] = "validation split (max recording-level balanced accuracy)"
        # the trivial baseline beside the model on the same validation recordings; the model at threshold
        # 0.5 (the tuned threshold is chosen on these very recordings and would flatter it)
        base = val["baseline"]
        rec = baseline_record(
            "balanced_accuracy", val["balanced_accuracy"], base["balanced_accuracy"], base["name"], True, "val"
        )
        rec["recording_level"] = True
        run.update_info(threshold=info["threshold"], threshold_source=info["threshold_source"], baseline=rec)
        val["baseline_record"] = rec
    return {"run_dir": str(run_dir), "best_epoch": res.best_epoch, "val": val, "init": init_report, "errors": errors}


def _read_init(src: Path) -> dict[str, Any]:
    """The state dict to start from: a source run's verified best checkpoint, or a weights file."""
    from medtransfer.shared.registry.weights import read_state_dict

    if src.is_dir():
        run = RunDir(src).require_app(APP)
        if not run.has_checkpoint("best"):
            raise InputError(src, "source run has no checkpoints/best.pt")
        return dict(run.load_checkpoint("best")["model"])
    if not src.is_file():
        raise InputError(src, "--init: no such run folder or weights file")
    return read_state_dict(src)


def load_run(run_dir: str | Path, which: str = "best"):
    """(model in eval mode, resolved config) of a run; a cropped model answers one prediction per window."""

    run = RunDir(run_dir).require_app(APP)
    if not run.has_checkpoint(which):
        raise InputError(run_dir, f"not an eeg run folder (no checkpoints/{which}.pt)")
    model, st = run.load_model(which)  # rebuilt from the model spec the checkpoint records
    cfg = st["config"]
    if cfg["model"].get("cropped"):
        from medtransfer.apps.eeg.cropped import window_mean

        model = window_mean(model)
    return model.eval(), cfg


def predict_windows(model, ds: WindowDataset, batch_size: int = 64) -> np.ndarray:
    """Abnormal probability of every window."""
    from medtransfer.shared.finetune import predict_arrays

    out, _ = predict_arrays(model, ds, batch_size=batch_size, device="cpu")
    return _softmax(np.asarray(out))[:, 1] if len(ds) else np.zeros(0)


def evaluate(
    run_dir: str | Path,
    manifest: str | Path,
    split: str = "test",
    progress: bool = True,
    write: bool = True,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Recording-level metrics of a run on one split of a manifest (window probabilities averaged).

    Args:
        run_dir: a run folder written by :func:`train`.
        manifest: manifest to evaluate (its split column, or the same deterministic split).
        split: ``test`` (default), ``val`` or ``train``; ``all`` = every row.
        progress: progress bar while preprocessing.
        write: save ``eval_<manifest>_<split>.json`` and per-recording CSV in the run folder.
        threshold: abnormal-probability threshold (default: the run's, chosen on its validation split).

    Returns:
        dict with ``balanced_accuracy``, ``auroc``, ``accuracy``, ``sensitivity``, ``specificity``,
        ``n_recordings``, ``n_windows``, ``errors``, and ``baseline``: the trivial baseline on the
        same recordings (the run's majority training class for every recording; its
        ``balanced_accuracy`` is 0.5 whenever both classes are present, ``auroc`` 0.5).
    """
    model, cfg = load_run(run_dir)
    if threshold is None:
        threshold = float(RunDir(run_dir).info().get("threshold", 0.5))
    manifest = Path(manifest)
    dcfg = dict(cfg["data"])
    splits = ["train", "val", "test"] if split == "all" else [split]
    got, errors = load_split(manifest, dcfg, splits, progress=progress)
    recs = [r for s in splits for r in got[s]]
    if not recs:
        raise InputError(manifest, f"no usable recordings in split '{split}'")
    ds = WindowDataset(recs)
    p = predict_windows(model, ds)
    ids, prob = aggregate(p, ds.recording_ids())
    y = np.array([LABELS.index(recs[i].label) for i in ids])
    m = recording_metrics(y, prob, threshold)
    m.update(
        n_windows=len(ds),
        window_balanced_accuracy=recording_metrics(ds.targets, p, threshold)["balanced_accuracy"],
        errors=errors,
        split=split,
        threshold=threshold,
        best_threshold=best_threshold(y, prob),
        baseline=majority_baseline(y, str(RunDir(run_dir).info().get("majority_class", "normal"))),
    )
    if write:
        run_dir = Path(run_dir)
        tag = f"{manifest.stem}_{split}"
        (run_dir / f"eval_{tag}.json").write_text(json.dumps(m, indent=2))
        with open(run_dir / f"eval_{tag}_recordings.csv", "w", encoding="utf-8") as f:
            f.write("case_id,label,prob_abnormal,n_windows\n")
            for i, pr in zip(ids, prob):
                f.write(f"{recs[i].case_id},{recs[i].label},{pr:.6f},{int((ds.recording_ids() == i).sum())}\n")
    return m


def majority_baseline(y: np.ndarray, majority: str) -> dict[str, Any]:
    """The trivial classifier's recording-level metrics: ``majority`` answered for every recording.

    Args:
        y: true labels (0 normal, 1 abnormal).
        majority: the majority class of the run's training recordings.

    Returns:
        dict with ``name``, ``balanced_accuracy``, ``auroc`` (0.5: a constant score), ``accuracy``.
    """
    y = np.asarray(y).astype(int)
    const = np.full(len(y), 1.0 if majority == "abnormal" else 0.0)
    m = recording_metrics(y, const, 0.5)
    return {
        "name": f"majority class '{majority}'",
        "balanced_accuracy": m["balanced_accuracy"],
        "auroc": 0.5,
        "accuracy": m["accuracy"],
    }


def best_threshold(y: np.ndarray, prob: np.ndarray) -> float:
    """The threshold maximising balanced accuracy (midpoints between sorted scores; ties -> nearest 0.5).

    Used on the validation split only; 0.5 when it holds a single class.
    """
    y = np.asarray(y).astype(int)
    if len(np.unique(y)) < 2:
        return 0.5
    s = np.unique(np.asarray(prob, dtype=float))
    cands = np.concatenate([[0.5], (s[:-1] + s[1:]) / 2]) if len(s) > 1 else np.array([0.5])
    best, best_t = -1.0, 0.5
    for t in sorted(cands, key=lambda c: abs(c - 0.5)):
        ba = recording_metrics(y, prob, float(t))["balanced_accuracy"]
        if ba > best + 1e-12:
            best, best_t = ba, float(t)
    return round(best_t, 6)
