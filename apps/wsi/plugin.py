"""The wsi app's spec for the core (torch-free, imports nothing heavy)."""

from __future__ import annotations

from medtransfer.shared.plugins import AppSpec

SPEC = AppSpec(
    name="wsi",
    help="Whole-slide prognosis: tiling + feature bags, attention-MIL survival, MoE-PKT transfer, ONNX scoring.",
    cli="medtransfer.apps.wsi.cli:app",
    predictor="medtransfer.apps.wsi.predict:WSIPredictor",
    exporter="medtransfer.apps.wsi.export:export_run",
    demo="medtransfer.apps.wsi.demo:demo",
    bench="medtransfer.apps.wsi.bench:bench",
    rank_features="medtransfer.apps.wsi.rank:rank_features",
    rank_demo="medtransfer.apps.wsi.rank:rank_demo",
    importers={"tcga": "medtransfer.apps.wsi.labels:import_tcga"},
    data_cards=("tcga_survival.md", "uni2h_dss.md"),
    reference_cases="medtransfer.apps.wsi.reference:reference_cases",  # validation bags (drift-only reference)
    input_stats="medtransfer.apps.wsi.reference:input_stats",
    # declared here so `medtransfer models` lists it without importing the (torch) model module
    backbones={
        "uni2h": {
            "builder": "medtransfer.apps.wsi.model:uni2h",
            "family": "timm",
            "pretrained_cfg": {
                "filename": "uni2h_pytorch_model.bin",
                "source": "MahmoodLab/UNI2-h (gated; user-supplied)",
            },
            "description": "UNI2-h architecture (ViT-H/14, 1536-d, SwiGLU, 8 registers); weights from a local file",
        }
    },
)
