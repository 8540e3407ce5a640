"""Train / evaluate / export for the generic image task (torch side)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch.utils.data import Dataset

from medtransfer.shared.config import load_yaml, resolve_config
from medtransfer.shared.export.guard import baseline_record
from medtransfer.shared.finetune import TRAIN_DEFAULTS, fit, predict_arrays
from medtransfer.shared.imagetask.data import load_image
from medtransfer.shared.manifest import Record, assign_splits, by_split, read_manifest, require_classes
from medtransfer.shared.registry import create_model
from medtransfer.shared.rundir import RunDir, model_builder, model_spec
from medtransfer.shared.runtime.gates import limits_for
from medtransfer.shared.utils.errors import MedTransferError
from medtransfer.shared.utils.seed import seed_everything


def defaults() -> dict[str, Any]:
    """The default recipe merged over the engine's train defaults."""
    cfg = load_yaml(Path(str(resources.files("medtransfer.shared.imagetask") / "recipe.yaml")))
    cfg["train"] = {**TRAIN_DEFAULTS, **cfg["train"]}
    return cfg


class ImageDataset(Dataset):
    """Manifest records -> (image tensor, class index)."""

    def __init__(self, records: list[Record], labels: list[str], prep: dict[str, Any]) -> None:
        self.records, self.labels, self.prep = records, labels, prep

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        r = self.records[i]
        return torch.from_numpy(load_image(r.path, self.prep)), self.labels.index(r.label)


def _prep(cfg: dict[str, Any]) -> dict[str, Any]:
    d = cfg["data"]
    return {
        "size": int(d["size"]),
        "grayscale": bool(d["grayscale"]),
        "mean": float(d["mean"]),
        "std": float(d["std"]),
        "resize": "area",
    }


def classification_metrics(logits: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy and macro-F1 from logits."""
    from sklearn.metrics import balanced_accuracy_score, f1_score

    pred = logits.argmax(1)
    return {
        "accuracy": float((pred == y).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, average="macro")),
    }


def _split(recs: list[Record], cfg: dict[str, Any]) -> list[Record]:
    """The run's train / val / test assignment (same fractions and seed as training)."""
    d = cfg["data"]
    return assign_splits(recs, d["val_fraction"], d["test_fraction"], d["split_seed"])


def _build(cfg: dict[str, Any], n_classes: int):
    pre = cfg["model"]["pretrained"]
    pretrained: Any = False if pre in ("", None, False, "false") else (True if pre in (True, "true") else pre)
    return create_model(
        cfg["model"]["name"],
        pretrained=pretrained,
        num_classes=n_classes,
        in_chans=1 if cfg["data"]["grayscale"] else 3,
    )


#: strategies that change the network itself (PEFT modules wrapped in): the model spec records them
PEFT_STRATEGIES: tuple[str, ...] = ("lora", "adapter")


@model_builder
def build_model(
    name: str, num_classes: int, in_chans: int = 3, strategy: str = "full", peft: dict[str, Any] | None = None
) -> torch.nn.Module:
    """An untrained registry model wrapped the way ``train.strategy`` wraps it (LoRA / adapters).

    What a PEFT run's model spec names, so ``RunDir.load_model`` (export, merge, evaluate) rebuilds
    the very modules the checkpoint's weights belong to (``fc.base.weight``, ``fc.lora_a.weight``...).

    Args:
        name: registry name.
        num_classes: classes of the head.
        in_chans: input channels.
        strategy: the run's ``train.strategy`` (``lora`` / ``adapter`` insert PEFT modules).
        peft: the run's ``train.peft`` section (targets, r, alpha...).

    Returns:
        The model (random weights).
    """
    from medtransfer.shared.finetune import setup_strategy

    model = create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    if strategy in PEFT_STRATEGIES:
        setup_strategy(model, {"strategy": strategy, "peft": dict(peft or {})})
    return model


def _spec(cfg: dict[str, Any], n_classes: int) -> dict[str, Any]:
    """The model spec a run records: the registry name, or :func:`build_model` for PEFT strategies."""
    name, in_chans = str(cfg["model"]["name"]), 1 if cfg["data"]["grayscale"] else 3
    strategy = str(cfg["train"].get("strategy", "full"))
    if strategy not in PEFT_STRATEGIES:
        return model_spec(registry=name, num_classes=n_classes, in_chans=in_chans)
    return model_spec(
        builder="medtransfer.shared.imagetask.task:build_model",
        name=name,
        num_classes=n_classes,
        in_chans=in_chans,
        strategy=strategy,
        peft=dict(cfg["train"].get("peft") or {}),
    )


def train(
    manifest: str | Path, out: str | Path, recipe: str | Path | None = None, overrides: Iterable[str] | None = None
) -> dict[str, Any]:
    """Fine-tune an image classifier on a manifest; returns the best validation metrics."""
    cfg = resolve_config(defaults(), recipe, list(overrides or []))
    recs = read_manifest(manifest, require_label=True)
    _split(recs, cfg)
    require_classes(recs, manifest, "train")
    labels = sorted({r.label for r in recs})
    prep = _prep(cfg)
    tr, va = by_split(recs, "train"), by_split(recs, "val")
    if not tr or not va:
        raise MedTransferError(f"{manifest}: need train and val cases (got {len(tr)} / {len(va)})")
    seed_everything(int(cfg["train"]["seed"]))  # the initial weights are the run's seed's
    model = _build(cfg, len(labels))
    res = fit(
        model,
        ImageDataset(tr, labels, prep),
        ImageDataset(va, labels, prep),
        cfg=cfg,
        run_dir=out,
        app="image",
        task="classification",
        loss_fn=torch.nn.functional.cross_entropy,
        metric_fn=classification_metrics,
        monitor="val_accuracy",
        mode="max",
        extra_state={"labels": labels, "preprocessing": prep},
        model_spec=_spec(cfg, len(labels)),
        data_files=[manifest],
    )
    # the trivial baseline beside the model, on the same validation cases: always the majority training class
    majority = max(labels, key=lambda c: sum(r.label == c for r in tr))
    base = baseline_record(
        "accuracy",
        res.best_metrics.get("val_accuracy", float("nan")),
        sum(r.label == majority for r in va) / len(va),
        f"majority class '{majority}'",
    )
    RunDir(out).update_info(labels=labels, preprocessing=prep, manifest=str(Path(manifest).resolve()), baseline=base)
    return {"best_epoch": res.best_epoch, **res.best_metrics, "baseline": base}


def load_run(run_dir: str | Path):
    """Rebuild the model of a run from its best checkpoint; returns (model, cfg, labels, prep)."""
    model, ck = RunDir(run_dir).load_model("best")  # rebuilt from the spec it records (registry name or PEFT builder)
    return model, ck["config"], ck["labels"], ck["preprocessing"]


def evaluate(run_dir: str | Path, manifest: str | Path, split: str = "test") -> dict[str, Any]:
    """Metrics of the best checkpoint on one split of a manifest."""
    model, cfg, labels, prep = load_run(run_dir)
    recs = read_manifest(manifest, require_label=True)
    _split(recs, cfg)
    sel = by_split(recs, split) if split != "all" else recs
    logits, y = predict_arrays(model, ImageDataset(sel, labels, prep), device="cpu")
    train = by_split(recs, "train") or recs
    majority = max(labels, key=lambda c: sum(r.label == c for r in train))
    base = {
        "baseline": f"majority class '{majority}'",
        "baseline_accuracy": sum(r.label == majority for r in sel) / max(len(sel), 1),
    }
    return {"split": split, "n": len(sel), **classification_metrics(logits, y), **base}


def export_run(
    run_dir: str | Path, out_dir: str | Path, quantize: str | None = None, overwrite: bool = True, force: bool = False
) -> Path:
    """Export a run as an ONNX bundle (dynamic batch), parity-checked; optional int8 copy.

    Args:
        run_dir: a run written by :func:`train`.
        out_dir: bundle folder (relative, absolute, empty or an existing bundle).
        quantize: ``"int8"`` also writes ``model.int8.onnx`` and records the accuracy change.
        overwrite: replace an existing bundle at ``out_dir`` (the CLI asks for ``--overwrite``).
        force: export even below the trivial baseline (the bundle is then marked unreliable).

    Returns:
        The bundle folder (absolute), written atomically (see ``shared.export.export_bundle``).
    """
    from medtransfer.shared.export import export_bundle

    return export_bundle(run_dir, out_dir, _write_bundle_files, quantize, overwrite, force)


def _write_bundle_files(run_dir: str | Path, out_dir: Path, quantize: str | None) -> Path:
    """Write the bundle into ``out_dir`` (the staging folder of :func:`export_run`)."""
    from medtransfer.shared.export import export_onnx, quantize_int8, write_bundle

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, cfg, labels, prep = load_run(run_dir)
    c = 1 if prep["grayscale"] else 3
    s = int(prep["size"])
    g = torch.Generator().manual_seed(0)
    ex = (torch.randn(2, c, s, s, generator=g),)
    parity = export_onnx(
        model,
        ex,
        out_dir / "model.onnx",
        ["image"],
        ["logits"],
        {"image": {0: "batch"}},
        parity_args=[(torch.randn(5, c, s, s, generator=g),)],
    )
    files = ["model.onnx"]
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    metrics: dict[str, Any] = {"validation": summary.get("best", {}), "parity_max_abs_diff": parity["max_abs_diff"]}
    if quantize == "int8":
        quantize_int8(out_dir / "model.onnx", out_dir / "model.int8.onnx")
        files.append("model.int8.onnx")
        metrics["int8"] = _int8_delta(run_dir, out_dir, cfg, prep)
    elif quantize:
        raise MedTransferError(f"unknown --quantize '{quantize}' (int8)")
    write_bundle(
        out_dir,
        name=f"image-{run_dir.name}",
        app="image",
        task="classification",
        files=files,
        inputs={"image": {"shape": [-1, c, s, s], "dtype": "float32", "format": "grayscale" if c == 1 else "rgb"}},
        outputs={"logits": {"shape": [-1, len(labels)], "dtype": "float32"}},
        preprocessing=prep,
        labels=labels,
        metrics=metrics,
        data_card="",
        description="Image classifier fine-tuned with the medtransfer core.",
        extra={"run_dir": str(run_dir.resolve()), "gates": limits_for("image_", "decode_")},
    )
    return out_dir


def _int8_delta(run_dir: Path, out_dir: Path, cfg: dict[str, Any], prep: dict[str, Any]) -> dict[str, float]:
    """Validation accuracy of fp32 ONNX vs int8 ONNX (the metric change quantization costs)."""
    import onnxruntime as ort

    info = RunDir(run_dir).info()
    recs = read_manifest(info["manifest"], require_label=True)
    va = by_split(_split(recs, cfg), "val")
    labels = info["labels"]
    x = np.stack([load_image(r.path, prep) for r in va])
    y = np.array([labels.index(r.label) for r in va])
    out = {}
    for tag, f in (("fp32", "model.onnx"), ("int8", "model.int8.onnx")):
        s = ort.InferenceSession(str(out_dir / f), providers=["CPUExecutionProvider"])
        out[f"val_accuracy_{tag}"] = float((s.run(None, {"image": x})[0].argmax(1) == y).mean())
    out["val_accuracy_change"] = out["val_accuracy_int8"] - out["val_accuracy_fp32"]
    return out


def demo(out_dir: str | Path, fast: bool = True) -> dict[str, Any]:
    """Shapes -> manifest -> fine-tune -> export -> score, on the core alone."""
    from medtransfer.shared.imagetask.data import import_image_folder, make_shapes
    from medtransfer.shared.runtime import score as sc

    out_dir = Path(out_dir)
    root = make_shapes(out_dir / "data" / "shapes", n_per_class=150 if fast else 400)
    man = import_image_folder(root, out_dir / "data" / "shapes.csv")
    best = train(man, out_dir / "run", overrides=[f"train.epochs={8 if fast else 20}", "train.progress=false"])
    test = evaluate(out_dir / "run", man)
    bundle = export_run(out_dir / "run", out_dir / "bundle")
    summary = sc.score(bundle, sc.cases_from_manifest(man), out_dir / "scores.csv", progress=False, overwrite=True)
    _plot_history(out_dir / "run", out_dir / "training.png")
    md = "\n".join(
        [
            "Noisy circle / square / triangle PNGs through the whole core: manifest, fine-tune (resnet18),",
            "ONNX export with parity check, torch-free batch scoring.",
            "",
            f"- best validation accuracy: {best.get('val_accuracy', float('nan')):.3f} (epoch {best['best_epoch']})",
            f"- held-out test accuracy: {test['accuracy']:.3f} on {test['n']} images",
            f"- scored {summary['ok']} cases ({summary['error']} errors) at {summary['cases_per_s']} cases/s",
            "",
            "![training curves](training.png)",
        ]
    )
    return {"markdown": md, "bundle": str(bundle), "metrics": {"test": test, "score": summary}}


def _plot_history(run_dir: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = json.loads((run_dir / "metrics.json").read_text())
    fig, ax = plt.subplots(1, 2, figsize=(8, 3))
    ep = [h["epoch"] + 1 for h in hist]
    ax[0].plot(ep, [h["train_loss"] for h in hist], label="train")
    ax[0].plot(ep, [h.get("val_loss", np.nan) for h in hist], label="val")
    ax[0].set_xlabel("epoch"), ax[0].set_ylabel("loss"), ax[0].legend()
    ax[1].plot(ep, [h.get("val_accuracy", np.nan) for h in hist])
    ax[1].set_xlabel("epoch"), ax[1].set_ylabel("val accuracy"), ax[1].set_ylim(0, 1.02)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
