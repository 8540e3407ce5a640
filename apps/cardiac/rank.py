"""The cardiac ``rank_features`` hook: pooled backbone features of the target's training frames.

A candidate is a run folder (a view or grade run: its encoder and its preprocessing), a bundle
(through its run folder), or a timm registry backbone (``resnet18``, ``densenet121``...) with local
ImageNet-style weights, or randomly initialised (seed 0).  The feature is the backbone's pooled
output (the input of the view / grade heads).

``stage`` (``--opt stage=grade``, the default) ranks for grading: the target is the 0-10 grade
(regression: LogME on the standardised grade, TMI on quantile-binned grades, Spearman probes);
``stage=view`` ranks for view classification (the manifest's labels).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np

from medtransfer.shared.utils.errors import MedTransferError


def _model_and_cfg(candidate: Any, opts: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    import torch

    from medtransfer.apps.cardiac.model import CardiacNet
    from medtransfer.apps.cardiac.train import make_config
    from medtransfer.shared.transferability.features import dotted_overrides

    if candidate.path is not None:
        from medtransfer.apps.cardiac.export import load_run_model

        model, cfg, _ = load_run_model(candidate.path)
        return model.eval(), dict(cfg)
    cfg = make_config(overrides=[*dotted_overrides(opts), f"model.backbone={candidate.backbone}"])
    torch.manual_seed(0)
    try:
        model = CardiacNet(backbone=str(candidate.backbone), pretrained=candidate.weights or False)
    except MedTransferError:
        raise
    except Exception as e:  # noqa: BLE001 - a backbone that does not build as an image encoder
        raise MedTransferError(
            f"'{candidate.backbone}' does not build as an echo image encoder ({type(e).__name__})"
        ) from None
    return model.eval(), cfg


def rank_features(
    candidate: Any, manifest: Path, stage: str = "grade", batch_size: int = 32, **opts: Any
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(features (b, D), target (b,))`` batches of the manifest's training frames.

    Args:
        candidate: a resolved ``shared.transferability.rank.Candidate``.
        manifest: cardiac manifest (``grade`` column for ``stage=grade``).
        stage: ``grade`` (float grades) or ``view`` (view class indices).
        batch_size: frames per forward pass.
        **opts: ``preprocessing.*`` overrides for registry candidates (runs keep their own).
    """
    import torch

    from medtransfer.apps.cardiac.preprocess import normalise
    from medtransfer.apps.cardiac.synthetic import VIEWS
    from medtransfer.apps.cardiac.train import load_split

    if stage not in ("grade", "view"):
        raise MedTransferError(f"stage must be grade or view (got {stage!r})")
    model, cfg = _model_and_cfg(candidate, dict(opts))
    params = dict(cfg["preprocessing"])
    crops, views, grades = load_split(Path(manifest), "train", params, need_grade=stage == "grade", views=VIEWS)
    for i in range(0, len(crops), batch_size):
        x = torch.from_numpy(normalise(crops[i : i + batch_size], params))
        with torch.no_grad():
            f = model.backbone(x).float().reshape(len(x), -1).numpy()
        y = grades[i : i + batch_size].astype(np.float64) if stage == "grade" else views[i : i + batch_size]
        yield f, y


def subset_manifest(manifest: Path, out_csv: Path, per_label: dict[str, int]) -> Path:
    """A smaller graded manifest: the first ``per_label[split]`` graded rows of each (split, view).

    Args:
        manifest: a cardiac manifest (splits assigned, ``grade`` column).
        out_csv: where to write it (paths stay pointing at the original files).
        per_label: rows kept per view for each split, e.g. ``{"train": 16, "val": 6, "test": 10}``.

    Returns:
        ``out_csv``.
    """
    from medtransfer.shared.manifest import read_manifest, write_manifest

    seen: dict[tuple[str, str], int] = {}
    keep = []
    for r in read_manifest(manifest):
        k = (r.split, r.label)
        if r.extra.get("grade", "") == "" or seen.get(k, 0) >= per_label.get(r.split, 0):
            continue
        seen[k] = seen.get(k, 0) + 1
        keep.append(r)
    return write_manifest(keep, out_csv)


def rank_demo(base: Path, demo_out: Path, fast: bool) -> dict[str, Any]:
    """The "Which source?" validation of this app at demo scale (see ``shared.transferability.demo``).

    Fast: the cardiac demo's manifest and view run (``<demo_out>/work/cardiac``) are reused when
    present (else a small phantom tree and a 48 px view run are made); every candidate is ranked at the
    view run's input size on a subset (12 training frames per view) and fine-tuned 3 epochs on it.

    Args:
        base: work folder.
        demo_out: the demo's output folder (its runs are reused where present).
        fast: demo scale.

    Returns:
        ``{"labels": {candidate: label}, "ranking": rank() result, "results": {candidate: fine-tuned result},
        "what": what the result is}`` (higher result = better).
    """
    import torch

    from medtransfer.apps.cardiac.data import import_cactus
    from medtransfer.apps.cardiac.synthetic import make_cactus_tree
    from medtransfer.apps.cardiac.train import train_grade, train_view
    from medtransfer.shared.imagetask.data import import_image_folder, make_shapes
    from medtransfer.shared.imagetask.task import train as train_image
    from medtransfer.shared.rundir import RunDir
    from medtransfer.shared.transferability.rank import rank

    work = Path(demo_out) / "work" / "cardiac"
    view_run = work / "run_view"
    if (work / "manifest.csv").is_file() and RunDir(view_run, must_exist=False).has_checkpoint("best"):
        full, reused = work / "manifest.csv", "the cardiac demo's view run and phantoms"
    else:  # no demo folder to reuse: small phantoms and a view model made here
        full, view_run, reused = base / "manifest.csv", base / "run_view", "a view run trained here"
        if not full.is_file():
            make_cactus_tree(base / "phantoms", n_per_view=16 if fast else 40, n_sessions=4, size=(96, 128))
            import_cactus(base / "phantoms", full)
        if not RunDir(view_run, must_exist=False).has_checkpoint("best"):
            vov = [f"preprocessing.size={48 if fast else 64}", "train.epochs=3" if fast else "train.epochs=6"]
            train_view(full, view_run, [*vov, "train.batch_size=16", "train.progress=false", "train.lr=0.002"])
    # every candidate sees the view run's input size (grading from the view run keeps its preprocessing);
    # 32 px is too small for resnet18: its last stage is 1x1 and its stride-2 shortcut reads one black corner
    size = int(RunDir(view_run).config()["preprocessing"]["size"])
    per = {"train": 12, "val": 4, "test": 8} if fast else {"train": 60, "val": 20, "test": 30}
    man = subset_manifest(full, base / "subset.csv", per)
    epochs = 3 if fast else 8
    ov = [f"preprocessing.size={size}", f"train.epochs={epochs}", "train.batch_size=16", "train.progress=false"]
    ov += ["train.lr=0.002"]
    # the "ImageNet-shaped" init: a timm resnet18 weight file (registry format) from another image task
    wfile = base / f"resnet18_shapes_{size}.pth"
    if not wfile.is_file():
        shapes = make_shapes(base / "shapes", n_per_class=8 if fast else 12, size=size)
        train_image(
            import_image_folder(shapes, base / "shapes.csv"),
            base / "run_shapes",
            overrides=[f"train.epochs={1 if fast else 2}", "train.progress=false", f"data.size={size}"],
        )
        model, _ = RunDir(base / "run_shapes").load_model("best")
        torch.save(model.state_dict(), wfile)
    labels = {str(view_run): "view model (stage 1)", f"resnet18={wfile}": "ImageNet-shaped init", "resnet18": "scratch"}
    res = rank(
        "cardiac",
        man,
        list(labels),
        base / "rank",
        allow_random_init=True,
        opts={"stage": "grade", "preprocessing.size": size},
        progress=False,
    )
    inits = {
        str(view_run): ("view", view_run, []),
        f"resnet18={wfile}": ("imagenet", None, [f"model.pretrained={wfile}"]),
        "resnet18": ("scratch", None, []),
    }
    results = {}
    for spec, (init, run, extra) in inits.items():
        g = train_grade(man, base / f"grade_{init}", run, [*ov, f"grade.init={init}", *extra])
        results[spec] = -float(g["test"]["mse"])
    n_train = per["train"] * 6
    what = f"-(test MSE) of grading ({reused}; {size} px, {epochs} epochs, <= {n_train} training frames)"
    return {"labels": labels, "ranking": res, "results": results, "what": what}
