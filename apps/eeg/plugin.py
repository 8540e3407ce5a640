"""The eeg app's spec for the core (torch-free, imports nothing heavy)."""

from __future__ import annotations

from medtransfer.shared.plugins import AppSpec

SPEC = AppSpec(
    name="eeg",
    help="EEG normal/abnormal: TUAB/NMT import, braindecode models, transfer sweep, ONNX predict.",
    cli="medtransfer.apps.eeg.cli:app",
    predictor="medtransfer.apps.eeg.predict:EEGPredictor",
    exporter="medtransfer.apps.eeg.export:export_run",
    demo="medtransfer.apps.eeg.demo:demo",
    bench="medtransfer.apps.eeg.bench:bench",
    bench_eager="medtransfer.apps.eeg.train:load_run",
    rank_features="medtransfer.apps.eeg.rank:rank_features",
    rank_demo="medtransfer.apps.eeg.rank:rank_demo",
    importers={
        "tuab": "medtransfer.apps.eeg.data:import_tuab",
        "nmt": "medtransfer.apps.eeg.data:import_nmt",
        "eeg-generic": "medtransfer.apps.eeg.data:import_generic",
        "bonn": "medtransfer.apps.eeg.data:import_bonn",
    },
    data_cards=("tuab.md", "nmt.md", "bonn.md", "own_folders.md"),
    reference_cases="medtransfer.apps.eeg.reference:reference_cases",
    input_stats="medtransfer.apps.eeg.reference:input_stats",
    merge_demo="medtransfer.apps.eeg.merge_demo:merge_demo",
)
