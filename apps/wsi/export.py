"""Export a wsi survival run to a bundle: the aggregator (MIL or MoE-PKT with its experts inside,
one variable-length bag in; risk, hazards, survival and attention out) and, when the run's bags
came from a registry encoder, the patch encoder (uint8-range RGB tiles in, features out)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from medtransfer.apps.wsi.features import RECORDED_KEYS, base_encoder, file_sha256
from medtransfer.apps.wsi.model import SurvivalHead, build_tile_encoder
from medtransfer.shared.export import export_onnx, write_bundle
from medtransfer.shared.rundir import RunDir
from medtransfer.shared.runtime.gates import limits_for
from medtransfer.shared.utils.errors import MedTransferError


def rebuild(run_dir: str | Path) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """The trained aggregator of a run (last-epoch weights), its wsi info and its config."""
    run = RunDir(run_dir)
    for p in (run.path / "config.yaml", run.checkpoint_path("last")):
        if not p.is_file():
            raise MedTransferError(f"{run_dir}: not a finished wsi run (missing {p.name})")
    w = run.info().get("wsi") or {}
    if "in_dim" not in w:
        raise MedTransferError(f"{run_dir}: run.json has no wsi model description")
    model, _ = run.load_model("last")  # verified, weights-only, rebuilt from the recorded model spec
    return model, w, run.config()


def export_run(
    run_dir: str | Path,
    out_dir: str | Path,
    quantize: Optional[str] = None,
    encoder: Optional[str] = None,
    encoder_weights: Any = None,
    overwrite: bool = True,
    force: bool = False,
) -> Path:
    """Export a run (``medtransfer export RUN_DIR --out BUNDLE``).

    Args:
        run_dir: a run written by ``medtransfer wsi train`` (or the demo).
        out_dir: bundle folder.
        quantize: unused for the aggregator (tiny); accepted for the common signature.
        encoder: patch encoder to add (default: the run's ``encoder`` when its feature size matches).
        encoder_weights: local weights for that encoder (default: the run's).
        overwrite: replace an existing bundle at ``out_dir`` (the CLI asks for ``--overwrite``).
        force: export even below the trivial baseline (the bundle is then marked unreliable).

    Returns:
        The bundle folder (absolute), written atomically (see ``shared.export.export_bundle``).
    """
    from medtransfer.shared.export import export_bundle

    def write(run: Path, tmp: Path, q: Optional[str]) -> Path:
        return _write_bundle_files(run, tmp, q, encoder, encoder_weights)

    return export_bundle(run_dir, out_dir, write, quantize, overwrite, force)


def _is_file(x: Any) -> bool:
    return isinstance(x, (str, Path)) and Path(x).is_file()


def _rebuildable_encoder(w: dict[str, Any], encoder_weights: Any) -> tuple[Optional[str], Any]:
    """The run's patch encoder as export can rebuild it: its bags' registry name (``+int8``
    dropped: the bundle carries the fp32 encoder) and its weights (given, or the file the bags
    recorded, found at its recorded path with its recorded sha256), or ``(None, None)`` with one
    line on stderr when it cannot: a name the registry does not know (bags of an
    ``--encoder-onnx`` file), or pretrained weights it cannot find unchanged (a random-init
    encoder would give other features than the bags it was trained on, and every slide the
    bundle scored would get a meaningless risk).  The bundle then scores feature bags (.h5), not
    slides.

    Raises:
        MedTransferError: ``encoder_weights`` given, and not the weights the bags came from.
    """
    import sys

    from medtransfer.shared.registry import list_models

    name = w.get("encoder")
    if not name:
        return None, None
    base = base_encoder(name)
    bagx = w.get("bag_extraction") or {}
    weights = encoder_weights if encoder_weights is not None else w.get("encoder_weights")
    why = None
    if base not in list_models():
        why = f"encoder '{name}' is not a registry encoder export can rebuild"
    elif _is_file(weights) and bagx.get("weights_sha256"):
        if file_sha256(Path(weights)) != bagx["weights_sha256"]:
            raise MedTransferError(f"{weights}: not the {base} weights the run's bags came from (sha256 differs)")
    elif w.get("encoder_pretrained") and weights is None:
        path, sha = bagx.get("weights_path"), bagx.get("weights_sha256")
        if not path or not sha:
            why = f"its bags came from pretrained {base} weights that the run does not record"
        elif not Path(str(path)).is_file():
            why = f"the {base} weights its bags came from are no longer at {path}"
        elif file_sha256(Path(str(path))) != sha:
            why = f"{path} no longer holds the {base} weights its bags came from (sha256 differs)"
        else:
            weights = str(path)
    elif weights is None and bagx.get("random_init_sha256"):
        from medtransfer.apps.wsi.features import random_init_digest

        if random_init_digest(base) != bagx["random_init_sha256"]:
            why = f"its bags came from a random-init {base} that this installation draws differently"
    if why:
        sys.stderr.write(f"export: no patch encoder in the bundle ({why}): it scores feature bags (.h5), not slides\n")
        return None, None
    return base, weights


def _write_bundle_files(
    run_dir: str | Path, out_dir: Path, quantize: str | None, encoder: Optional[str] = None, encoder_weights: Any = None
) -> Path:
    """Write the bundle into ``out_dir`` (the staging folder of :func:`export_run`)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    model, w, cfg = rebuild(run_dir)
    dim = int(w["in_dim"])
    out_dir.mkdir(parents=True, exist_ok=True)
    head = SurvivalHead(model).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 9, dim, generator=g)
    m = torch.ones(2, 9)
    m[1, 6:] = 0
    x1 = torch.randn(1, 23, dim, generator=g)
    parity = export_onnx(
        head,
        (x, m),
        out_dir / "model.onnx",
        ["features", "mask"],
        ["risk", "hazards", "survival", "attention"],
        dynamic={"features": {0: "batch", 1: "n_patches"}, "mask": {0: "batch", 1: "n_patches"}},
        atol=1e-4,
        parity_args=[(x1, torch.ones(1, 23))],
    )
    files = ["model.onnx"]
    enc_name, enc_weights = (encoder, encoder_weights) if encoder else _rebuildable_encoder(w, encoder_weights)
    pre: dict[str, Any] = {
        "bin_edges_months": w["edges"],
        "feature_dim": dim,
        "endpoint": cfg["data"]["endpoint"],
        "risk_threshold": w.get("risk_threshold"),
    }
    bagx = w.get("bag_extraction") or {}
    if bagx:  # predict refuses a bag extracted otherwise (another encoder or weights, tile MPP or size)
        pre["bag_extraction"] = {k: v for k, v in bagx.items() if k not in RECORDED_KEYS}  # no local paths
    if encoder and bagx.get("encoder") and base_encoder(encoder) != base_encoder(bagx["encoder"]):
        raise MedTransferError(
            f"encoder {encoder} is not the one the run's bags came from ({bagx['encoder']}): "
            "its features would not be the model's"
        )
    metrics: dict[str, Any] = {"onnx_parity_max_abs_diff": parity["max_abs_diff"]}
    if enc_name:
        enc, edim, pre_ok = build_tile_encoder(enc_name, enc_weights)
        if edim != dim:
            raise MedTransferError(f"encoder {enc_name} gives {edim}-d features but the aggregator expects {dim}")
        ps = int(w.get("patch_size", 224))
        tiles = torch.rand(2, 3, ps, ps, generator=g) * 255
        ep = export_onnx(
            enc.eval(),
            (tiles,),
            out_dir / "encoder.onnx",
            ["tiles"],
            ["features"],
            dynamic={"tiles": {0: "batch"}},
            atol=1e-3,
        )
        files.append("encoder.onnx")
        metrics["encoder_parity_max_abs_diff"] = ep["max_abs_diff"]
        pre.update(
            {
                "encoder": enc_name,
                "encoder_pretrained": bool(pre_ok),
                **({"encoder_weights_sha256": file_sha256(Path(enc_weights))} if _is_file(enc_weights) else {}),
                "patch_size": ps,
                "target_mpp": float(w.get("target_mpp", 0.5)),
                "tissue_fraction_min": float(w.get("tissue_fraction_min", 0.25)),
                "tile_input": "RGB float32 0-255, NCHW; normalisation inside the graph",
            }
        )
    cvp = run_dir / "cv.json"
    if cvp.is_file():
        cv = json.loads(cvp.read_text())
        metrics.update({"cv_c_index_mean": cv.get("c_index_mean"), "cv_c_index_sd": cv.get("c_index_sd")})
    metrics.update(w.get("metrics") or {})
    n_bins = len(w["edges"]) - 1
    kind = w.get("kind", "mil")
    write_bundle(
        out_dir,
        name=f"wsi-survival-{kind}-{w.get('study', 'model')}",
        app="wsi",
        task="survival",
        files=files,
        inputs={
            "features": {"shape": [-1, -1, dim], "dtype": "float32", "format": "patch-feature bag (padded)"},
            "mask": {"shape": [-1, -1], "dtype": "float32", "value_range": [0, 1], "format": "1 = real patch"},
        },
        outputs={
            "risk": {"shape": [-1], "dtype": "float32", "format": "-sum(survival); higher = worse"},
            "hazards": {"shape": [-1, n_bins], "dtype": "float32"},
            "survival": {"shape": [-1, n_bins], "dtype": "float32"},
            "attention": {"shape": [-1, -1], "dtype": "float32"},
        },
        preprocessing=pre,
        labels=[f"bin{i}" for i in range(n_bins)],
        metrics=metrics,
        data_card="data_cards/tcga_survival.md",
        description=(
            f"Discrete-time survival from whole-slide feature bags ({kind}: "
            + (
                "MoE-PKT over source models " + ", ".join(w.get("sources", []))
                if kind == "moe"
                else "gated attention MIL"
            )
            + f"), {n_bins} hazard bins."
        ),
        extra={
            "model_kind": kind,
            "sources": w.get("sources", []),
            "study": w.get("study", ""),
            "gates": limits_for("feature_", "image_"),
        },
    )
    return out_dir
