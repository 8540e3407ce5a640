"""The videoseg app's spec (torch-free; imports nothing heavy)."""

from medtransfer.shared.plugins import AppSpec

SPEC = AppSpec(
    name="videoseg",
    help="Video object segmentation: SAM2 + depthwise-dilated adapters, streaming ONNX propagation (EchoNet, TrackRAD).",
    cli="medtransfer.apps.videoseg.cli:app",
    predictor="medtransfer.apps.videoseg.predict:VideoSegPredictor",
    exporter="medtransfer.apps.videoseg.export:export_run",
    demo="medtransfer.apps.videoseg.demo:demo",
    bench="medtransfer.apps.videoseg.bench:bench",
    rank_features="medtransfer.apps.videoseg.rank:rank_features",
    importers={
        "echonet_dynamic": "medtransfer.apps.videoseg.data:import_echonet",
        "trackrad2025": "medtransfer.apps.videoseg.data:import_trackrad",
    },
    data_cards=("echonet_dynamic.md", "trackrad2025.md"),
    reference_cases="medtransfer.apps.videoseg.reference:reference_cases",
    input_stats="medtransfer.apps.videoseg.reference:input_stats",
)
