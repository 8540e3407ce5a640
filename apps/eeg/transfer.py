"""Cross-dataset transfer sweep: pretrain on a source manifest, fine-tune on fractions of the
target's training recordings with each strategy, compare with training from scratch on the same
fractions, and measure forgetting (source test accuracy before and after fine-tuning).

The paper's two baselines are modes of the same sweep (``baselines``):

* ``concat``: train from scratch on the source training recordings concatenated with the same
  target fraction (validated on the target's val split), scored on the target test split
  (mode ``concat``);
* ``scaling``: source-data scaling, pretrain on a fraction of the source training recordings,
  then fine-tune (``full``) on the whole target training split; mode ``source_scaling_<f>``
  (``fraction`` is the target fraction used, ``source_fraction`` the source one), with the
  pretrained model's source test accuracy and the forgetting after fine-tuning.

Outputs ``<out>/transfer_results.csv`` (one row per fraction x seed x mode), ``transfer_summary.csv``
(mean and std over seeds) and ``transfer_sweep.png``.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from medtransfer.apps.eeg.data import LABELS
from medtransfer.shared.manifest import Record, assign_splits, read_manifest, write_manifest
from medtransfer.shared.rundir import RunDir
from medtransfer.shared.utils.errors import InputError, MedTransferError

STRATEGY_ALIASES = {
    "full": "full",
    "freeze": "linear_probe",
    "linear_probe": "linear_probe",
    "llrd": "llrd",
    "gradual_unfreeze": "gradual_unfreeze",
}


def subsample(records: Sequence[Record], fraction: float, seed: int) -> list[Record]:
    """A stratified fraction of training recordings (at least one per class), grouped by patient."""
    rng = np.random.default_rng(seed)
    out: list[Record] = []
    for lab in LABELS:
        groups: dict[str, list[Record]] = {}
        for r in records:
            if r.label == lab:
                groups.setdefault(r.group or r.case_id, []).append(r)
        keys = sorted(groups)
        if not keys:
            continue
        k = max(1, int(math.ceil(fraction * len(keys) - 1e-9)))
        for g in rng.permutation(keys)[:k]:
            out += groups[str(g)]
    return out


def _split_target(target: Path, dcfg: Mapping[str, Any]) -> list[Record]:
    recs = read_manifest(target, require_label=True)
    for r in recs:
        r.label = r.label.lower()
    assign_splits(recs, float(dcfg["val_fraction"]), float(dcfg["test_fraction"]), int(dcfg["split_seed"]))
    return recs


BASELINES = ("concat", "scaling")


def sweep(
    source: str | Path,
    target: str | Path,
    out: str | Path,
    cfg: Mapping[str, Any],
    strategies: Sequence[str] = ("full",),
    fractions: Sequence[float] = (0.01, 0.05, 0.1, 0.25, 1.0),
    seeds: Sequence[int] = (0, 1, 2),
    source_run: str | Path | None = None,
    finetune_lr: float | None = None,
    progress: bool = False,
    baselines: Sequence[str] = (),
    source_fractions: Sequence[float] = (0.1, 0.25, 0.5, 1.0),
) -> dict[str, Any]:
    """Run the sweep.

    Args:
        source: source manifest (pretraining; its test split measures forgetting).
        target: target manifest (its train split is subsampled; val for early stopping; test scored).
        out: output folder.
        cfg: resolved eeg config (one recipe for both datasets, as in the paper).
        strategies: ``full``, ``linear_probe`` (alias ``freeze``: all but the classifier frozen), ``llrd``.
        fractions: fractions of target training recordings (per class, at least one).
        seeds: seeds (subsample and training).
        source_run: reuse an already trained source run instead of pretraining.
        finetune_lr: learning rate for fine-tuning (default: the recipe's).
        progress: progress bars.
        baselines: the paper's baselines to add: ``concat`` (source + target fraction from
            scratch) and/or ``scaling`` (pretraining on ``source_fractions`` of the source).
        source_fractions: fractions of source training recordings for ``scaling``.

    Returns:
        dict with ``table`` (CSV path), ``summary`` (CSV path), ``plot`` (PNG path), ``rows``,
        ``source_before`` (source test metrics of the pretrained model).
    """
    from medtransfer.apps.eeg.train import evaluate, train

    source, target, out = Path(source), Path(target), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = copy.deepcopy(dict(cfg))
    if not cfg["data"].get("cache_dir"):
        cfg["data"]["cache_dir"] = str(out / ".eeg_cache")
    cfg["data"]["cache_dir"] = str(Path(cfg["data"]["cache_dir"]).absolute())  # recorded absolute
    bad = [s for s in strategies if s not in STRATEGY_ALIASES]
    if bad:
        raise MedTransferError(f"unknown strategy {bad[0]!r} (use {', '.join(STRATEGY_ALIASES)})")
    bad = [b for b in baselines if b not in BASELINES]
    if bad:
        raise MedTransferError(f"unknown baseline {bad[0]!r} (use {', '.join(BASELINES)})")
    if "scaling" in baselines and not all(0 < float(f) <= 1 for f in source_fractions):
        raise MedTransferError("source fractions must be in (0, 1]")
    if source_run is None:
        source_run = out / "source"
        if (
            not RunDir(source_run, must_exist=False).has_checkpoint("best")
            or not (Path(source_run) / "summary.json").is_file()
        ):
            train(source, source_run, cfg, progress=progress)
    before = evaluate(source_run, source, split="test", progress=progress, write=False)
    recs = _split_target(target, cfg["data"])
    tr = [r for r in recs if r.split == "train"]
    rest = [r for r in recs if r.split in ("val", "test")]
    if not tr:
        raise InputError(target, "target manifest has no training recordings")
    rows: list[dict[str, Any]] = []
    _src: list[list[Record]] = []

    def src_recs() -> list[Record]:
        if not _src:
            _src.append(_split_target(source, cfg["data"]))
        return _src[0]

    for frac in fractions:
        for seed in seeds:
            sub = subsample(tr, float(frac), seed)
            tag = f"f{frac:g}_s{seed}"
            man = write_manifest(sub + rest, out / "manifests" / f"target_{tag}.csv")
            modes = [("scratch", None, "full")] + [
                (f"transfer_{s}", source_run, STRATEGY_ALIASES[s]) for s in strategies
            ]
            for mode, init, strat in modes:
                c = copy.deepcopy(cfg)
                c["train"]["seed"] = int(seed)
                c["train"]["strategy"] = strat
                if init is not None and finetune_lr:
                    c["train"]["lr"] = float(finetune_lr)
                run = out / "runs" / f"{mode}_{tag}"
                train(man, run, c, init=init, progress=progress)
                m = evaluate(run, man, split="test", progress=progress, write=False)
                row = {
                    "fraction": float(frac),
                    "seed": int(seed),
                    "mode": mode,
                    "n_target_train": len(sub),
                    "target_balanced_accuracy": m["balanced_accuracy"],
                    "target_auroc": m["auroc"],
                    "source_balanced_accuracy_before": before["balanced_accuracy"],
                    "source_balanced_accuracy_after": "",
                    "forgetting": "",
                }
                if init is not None:
                    s_after = evaluate(run, source, split="test", progress=progress, write=False)
                    row["source_balanced_accuracy_after"] = s_after["balanced_accuracy"]
                    row["forgetting"] = before["balanced_accuracy"] - s_after["balanced_accuracy"]
                rows.append(row)
            if "concat" in baselines:
                rows.append(_concat_row(source, src_recs(), sub, rest, out, tag, cfg, seed, frac, before, progress))
    if "scaling" in baselines:
        for sfrac in source_fractions:
            for seed in seeds:
                rows.append(_scaling_row(source, target, src_recs(), tr, rest, out, cfg, seed, float(sfrac), progress))
    table = out / "transfer_results.csv"
    _write_csv(rows, table)
    summary_rows = summarize(rows)
    summary = out / "transfer_summary.csv"
    _write_csv(summary_rows, summary)
    plot = plot_sweep(summary_rows, out / "transfer_sweep.png", before["balanced_accuracy"])
    (out / "transfer.json").write_text(
        json.dumps({"source_before": before, "summary": summary_rows}, indent=2, default=str)
    )
    return {
        "table": table,
        "summary": summary,
        "plot": plot,
        "rows": rows,
        "summary_rows": summary_rows,
        "source_before": before,
        "source_run": str(source_run),
    }


def _concat_row(
    source: Path,
    src: Sequence[Record],
    sub: Sequence[Record],
    rest: Sequence[Record],
    out: Path,
    tag: str,
    cfg: Mapping[str, Any],
    seed: int,
    frac: float,
    before: Mapping[str, Any],
    progress: bool,
) -> dict[str, Any]:
    """The concatenation baseline: scratch on source train + target fraction, target val/test."""
    from medtransfer.apps.eeg.train import evaluate, train

    src_train = [r for r in src if r.split == "train"]

    def site(rs: Sequence[Record], name: str) -> list[Record]:  # patient ids are each dataset's own
        return [dataclasses.replace(r, group=f"{name}:{r.group}" if r.group else "") for r in rs]

    rows = site(src_train, "source") + site(list(sub) + list(rest), "target")
    man = write_manifest(rows, out / "manifests" / f"concat_{tag}.csv")
    c = copy.deepcopy(dict(cfg))
    c["train"]["seed"] = int(seed)
    c["train"]["strategy"] = "full"
    run = out / "runs" / f"concat_{tag}"
    train(man, run, c, progress=progress)
    m = evaluate(run, man, split="test", progress=progress, write=False)  # the target's test recordings only
    s_after = evaluate(run, source, split="test", progress=progress, write=False)
    return {
        "fraction": float(frac),
        "seed": int(seed),
        "mode": "concat",
        "n_target_train": len(sub),
        "target_balanced_accuracy": m["balanced_accuracy"],
        "target_auroc": m["auroc"],
        "source_balanced_accuracy_before": before["balanced_accuracy"],
        "source_balanced_accuracy_after": s_after["balanced_accuracy"],
        "forgetting": "",
        "n_source_train": len(src_train),
    }


def _scaling_row(
    source: Path,
    target: Path,
    src: Sequence[Record],
    tr: Sequence[Record],
    rest: Sequence[Record],
    out: Path,
    cfg: Mapping[str, Any],
    seed: int,
    sfrac: float,
    progress: bool,
) -> dict[str, Any]:
    """Source-data scaling: pretrain on ``sfrac`` of the source train split, fine-tune on all target train."""
    from medtransfer.apps.eeg.train import evaluate, train

    src_train = [r for r in src if r.split == "train"]
    src_sub = subsample(src_train, sfrac, seed)
    tag = f"src{sfrac:g}_s{seed}"
    src_man = write_manifest(
        src_sub + [r for r in src if r.split in ("val", "test")], out / "manifests" / f"source_{tag}.csv"
    )
    c = copy.deepcopy(dict(cfg))
    c["train"]["seed"] = int(seed)
    c["train"]["strategy"] = "full"
    pre = out / "runs" / f"source_scaling_{tag}"
    train(src_man, pre, c, progress=progress)
    before = evaluate(pre, src_man, split="test", progress=progress, write=False)
    tgt_man = write_manifest(list(tr) + list(rest), out / "manifests" / f"target_full_s{seed}.csv")
    run = out / "runs" / f"source_scaling_{tag}_ft"
    train(tgt_man, run, c, init=pre, progress=progress)
    m = evaluate(run, tgt_man, split="test", progress=progress, write=False)
    after = evaluate(run, src_man, split="test", progress=progress, write=False)
    return {
        "fraction": 1.0,
        "seed": int(seed),
        "mode": f"source_scaling_{sfrac:g}",
        "n_target_train": len(tr),
        "target_balanced_accuracy": m["balanced_accuracy"],
        "target_auroc": m["auroc"],
        "source_balanced_accuracy_before": before["balanced_accuracy"],
        "source_balanced_accuracy_after": after["balanced_accuracy"],
        "forgetting": before["balanced_accuracy"] - after["balanced_accuracy"],
        "source_fraction": float(sfrac),
        "n_source_train": len(src_sub),
    }


def summarize(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean / std over seeds per (mode, fraction)."""
    keys = sorted({(r["mode"], r["fraction"]) for r in rows}, key=lambda k: (k[0] != "scratch", k[0], k[1]))
    out = []
    for mode, frac in keys:
        rs = [r for r in rows if r["mode"] == mode and r["fraction"] == frac]
        d: dict[str, Any] = {
            "mode": mode,
            "fraction": frac,
            "n_seeds": len(rs),
            "n_target_train": int(np.mean([r["n_target_train"] for r in rs])),
        }
        for k in ("target_balanced_accuracy", "target_auroc", "forgetting"):
            v = [float(r[k]) for r in rs if r[k] != "" and r[k] is not None and not _isnan(r[k])]
            d[f"{k}_mean"] = round(float(np.mean(v)), 4) if v else ""
            d[f"{k}_std"] = round(float(np.std(v)), 4) if v else ""
        out.append(d)
    return out


def _isnan(x: Any) -> bool:
    try:
        return math.isnan(float(x))
    except (TypeError, ValueError):
        return False


def _write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
    return path


def plot_sweep(summary_rows: Sequence[Mapping[str, Any]], path: Path, source_before: float) -> Path:
    """Target balanced accuracy and AUROC vs label fraction per mode, plus forgetting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    modes = list(dict.fromkeys(r["mode"] for r in summary_rows))
    colors = {m: f"C{i}" for i, m in enumerate(modes)}
    ticks = sorted({100 * r["fraction"] for r in summary_rows})
    for mode in modes:
        rs = sorted((r for r in summary_rows if r["mode"] == mode), key=lambda r: r["fraction"])
        x = [100 * r["fraction"] for r in rs]
        for ax, key in zip(axes[:2], ("target_balanced_accuracy", "target_auroc")):
            y = [r[f"{key}_mean"] if r[f"{key}_mean"] != "" else np.nan for r in rs]
            e = [r[f"{key}_std"] if r[f"{key}_std"] != "" else 0 for r in rs]
            ax.errorbar(
                x,
                y,
                yerr=e,
                marker="o",
                capsize=3,
                label=mode,
                ls="--" if mode == "scratch" else "-",
                color=colors[mode],
            )
        if mode != "scratch":
            y = [r["forgetting_mean"] if r["forgetting_mean"] != "" else np.nan for r in rs]
            axes[2].plot(x, y, marker="o", label=mode, color=colors[mode])
    for ax, title in zip(
        axes, ("target balanced accuracy", "target AUROC", f"forgetting (source BA {source_before:.2f} before)")
    ):
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:g}" for t in ticks])
        ax.set_xlabel("% of target training recordings")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylim(0.3, 1.05)
    axes[1].set_ylim(0.3, 1.05)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
