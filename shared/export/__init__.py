"""ONNX export: dynamo exporter, parity against PyTorch, onnx.checker, bundle metadata, int8."""
from medtransfer.shared.export.onnx_export import ParityError, export_onnx, quantize_int8  # noqa: F401
from medtransfer.shared.export.bundle_writer import library_versions, write_bundle  # noqa: F401
