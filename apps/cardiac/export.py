"""Export a cardiac run to ONE bundle: ``model.onnx`` with outputs ``view_logits`` and ``grade``.

Choice: a single two-head graph (shared encoder).  Exported from the stage-2 run when it trained
the view head too (``grade.view_weight`` > 0), so both outputs come from one forward pass; a
stage-1 run exports too (its ``grade`` output is then untrained and marked so in the metadata).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from medtransfer.apps.cardiac.synthetic import VIEWS
from medtransfer.shared.rundir import RunDir
from medtransfer.shared.runtime.gates import limits_for
from medtransfer.shared.utils.errors import MedTransferError


def load_run_model(run_dir: str | Path) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any]]:
    """(model in eval mode, config, run.json) from a run's best checkpoint."""
    run = RunDir(run_dir).require_app("cardiac")
    if not run.has_checkpoint("best"):
        raise MedTransferError(f"{run_dir}: no checkpoints/best.pt (not a finished cardiac run)")
    model, st = run.load_model("best")  # rebuilt from the model spec the checkpoint records
    return model, st["config"], run.info()


def export_run(
    run_dir: str | Path, out_dir: str | Path, quantize: str | None = None, overwrite: bool = True, force: bool = False
) -> Path:
    """Write the bundle.

    Args:
        run_dir: a stage-1 (view) or stage-2 (grade) run.
        out_dir: bundle folder.
        quantize: ``int8`` also writes ``model_int8.onnx`` (dynamic quantisation).
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

    model, cfg, info = load_run_model(run_dir)
    out = Path(out_dir).resolve()  # write_bundle reads relative file paths as relative to the bundle
    out.mkdir(parents=True, exist_ok=True)
    params = dict(cfg["preprocessing"])
    s = int(params["size"])
    ex = (torch.randn(2, int(params["channels"]), s, s),)
    parity = export_onnx(
        model,
        ex,
        out / "model.onnx",
        ["image"],
        ["view_logits", "grade"],
        dynamic={"image": {0: "batch"}},
        parity_args=[(torch.randn(3, int(params["channels"]), s, s),)],
    )
    files = [out / "model.onnx"]
    if quantize == "int8":
        quantize_int8(out / "model.onnx", out / "model_int8.onnx")
        files.append(out / "model_int8.onnx")
    views = [str(v) for v in (cfg["model"].get("views") or VIEWS)]
    stage = info.get("stage", "view")
    grade_ok = stage == "grade"
    view_ok = stage in ("view", "add_view") or float(cfg.get("grade", {}).get("view_weight", 0) or 0) > 0
    write_bundle(
        out,
        name="cardiac-view-grade",
        app="cardiac",
        task="view+grade",
        files=files,
        inputs={
            "image": {
                "shape": [-1, int(params["channels"]), s, s],
                "dtype": "float32",
                "description": "sector-cropped gray echo frame, normalised, replicated to channels",
            }
        },
        outputs={
            "view_logits": {"shape": [-1, len(views)], "labels": views, "trained": view_ok},
            "grade": {"shape": [-1], "range": [0, 10], "trained": grade_ok},
        },
        preprocessing=params,
        labels=views,
        metrics={"val": info.get("val", {}), "test": info.get("test", {}), "parity": parity},
        data_card="data_cards/cactus.md",
        description=f"Echo view classification ({len(views)} classes: {', '.join(views)}) and image-quality grade 0-10 from one "
        f"{cfg['model']['backbone']} encoder; stage-2 encoder initialised from the view model.",
        extra={
            "gates": limits_for("image_", "video_", "decode_"),
            "ood": info.get("ood", {}),
            "stage": stage,
            "backbone": str(cfg["model"]["backbone"]),
            "init": info.get("init", ""),
            "unreliable_rule": "view == Random OR max softmax < ood.msp_threshold OR sector not found",
        },
    )
    return out
