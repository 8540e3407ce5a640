"""ONNX export: dynamo exporter, parity against PyTorch, onnx.checker, bundle metadata, int8,
and atomic bundle output (:func:`staged_output`)."""

from medtransfer.shared.export.atomic import check_output, staged_output  # noqa: F401
from medtransfer.shared.export.bundle_writer import library_versions, write_bundle, write_checksums  # noqa: F401
from medtransfer.shared.export.guard import baseline_record, export_bundle  # noqa: F401
from medtransfer.shared.export.onnx_export import ParityError, export_onnx, quantize_int8  # noqa: F401
