"""EEG pathology app: TUAB / NMT import with the paper's preprocessing, braindecode models,
cross-dataset transfer with a label-fraction sweep, recording-level ONNX predict.

Torch-free at import time.
"""
