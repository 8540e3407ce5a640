"""The cardiac app's spec (torch-free; imports nothing heavy)."""

from medtransfer.shared.plugins import AppSpec

SPEC = AppSpec(
    name="cardiac",
    help="Echo view classification then quality grading by transfer (CACTUS).",
    cli="medtransfer.apps.cardiac.cli:app",
    predictor="medtransfer.apps.cardiac.predict:CardiacPredictor",
    exporter="medtransfer.apps.cardiac.export:export_run",
    demo="medtransfer.apps.cardiac.demo:demo",
    bench="medtransfer.apps.cardiac.bench:bench",
    bench_eager="medtransfer.apps.cardiac.export:load_run_model",
    rank_features="medtransfer.apps.cardiac.rank:rank_features",
    rank_demo="medtransfer.apps.cardiac.rank:rank_demo",
    importers={
        "cactus": "medtransfer.apps.cardiac.data:import_cactus",
        "echo_folder": "medtransfer.apps.cardiac.data:import_folder",
    },
    data_cards=("cactus.md", "own_folders.md"),
    reference_cases="medtransfer.apps.cardiac.reference:reference_cases",
    input_stats="medtransfer.apps.cardiac.reference:input_stats",
    merge_demo="medtransfer.apps.cardiac.merge_demo:merge_demo",
)
