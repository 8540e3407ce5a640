"""Bench hook of the image task: a small bundle for ``medtransfer bench`` without ``--bundle``."""

from __future__ import annotations

from pathlib import Path


def bench_bundle(work_dir: str | Path) -> tuple[Path, list[Path]]:
    """Shapes -> 1-epoch resnet18 (1x64x64) -> bundle, for ``medtransfer bench`` without ``--bundle``.

    Args:
        work_dir: folder for the data, run and bundle.

    Returns:
        ``(bundle_dir, sample_images)``.
    """
    from medtransfer.shared.imagetask.data import import_image_folder, make_shapes
    from medtransfer.shared.imagetask.task import export_run, train

    work = Path(work_dir)
    root = make_shapes(work / "shapes", n_per_class=30)
    man = import_image_folder(root, work / "m.csv")
    train(man, work / "run", overrides=["train.epochs=1", "train.progress=false"])
    # speed only: a one-epoch model may not beat the majority class, so the guard is overridden
    return export_run(work / "run", work / "bundle", force=True), sorted(root.rglob("*.png"))
