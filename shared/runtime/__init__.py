"""Torch-free runtime: bundles, predictors, batch scoring.  Must never import torch."""
