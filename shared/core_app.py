"""The core's own small image task (``medtransfer image ...``): the whole core path on PNGs.

It is the smallest complete user of the core (manifest -> fine-tune -> export -> predict ->
score -> bench) and the default bundle of ``medtransfer bench``.  Torch-free at import.
"""
from medtransfer.shared.plugins import AppSpec, register_core_app

SPEC = AppSpec(
    name="image",
    help="Generic image classification on the shared core (PNG/JPEG manifest).",
    cli="medtransfer.shared.imagetask.cli:app",
    predictor="medtransfer.shared.imagetask.predict:ImagePredictor",
    exporter="medtransfer.shared.imagetask.task:export_run",
    demo="medtransfer.shared.imagetask.task:demo",
    importers={"image-folder": "medtransfer.shared.imagetask.data:import_image_folder"},
)
register_core_app(SPEC)
