"""The image task's spec: the core's own small PNG classifier, plugged in like any app (torch-free)."""

from medtransfer.shared.plugins import AppSpec

SPEC = AppSpec(
    name="image",
    help="Generic image classification on the shared core (PNG/JPEG manifest).",
    cli="medtransfer.shared.imagetask.cli:app",
    predictor="medtransfer.shared.imagetask.predict:ImagePredictor",
    exporter="medtransfer.shared.imagetask.task:export_run",
    demo="medtransfer.shared.imagetask.task:demo",
    bench_eager="medtransfer.shared.imagetask.task:load_run",
    bench_bundle="medtransfer.shared.imagetask.bench:bench_bundle",
    # stands in for `medtransfer demo` only until an app is installed (`--apps image` runs it)
    demo_default=False,
    importers={"image-folder": "medtransfer.shared.imagetask.data:import_image_folder"},
    data_cards=("own_folders.md",),
    reference_cases="medtransfer.shared.imagetask.reference:reference_cases",
    input_stats="medtransfer.shared.imagetask.reference:input_stats",
    rank_features="medtransfer.shared.imagetask.rank:rank_features",
)
