"""Video object segmentation: SAM2 with depthwise-dilated adapters, streaming propagation, ONNX."""
