"""Torch-free predictor for image-classification bundles."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medtransfer.shared.imagetask.data import SUFFIXES, load_image
from medtransfer.shared.runtime.predictor import Predictor, softmax


class ImagePredictor(Predictor):
    """Label and class probabilities for one image."""

    suffixes = SUFFIXES

    def predict(self, path: Path, **case: Any) -> dict[str, Any]:
        x = load_image(path, self.bundle.preprocessing)[None]
        logits = self.bundle.run({"image": x})["logits"][0]
        prob = softmax(logits.astype(np.float64))
        labels = self.bundle.labels
        k = int(np.argmax(prob))
        return {"label": labels[k], "probability": float(prob[k]),
                "probabilities": {lab: round(float(p), 6) for lab, p in zip(labels, prob)}}

    def predict_batch(self, x: np.ndarray) -> np.ndarray:
        """Logits for a preprocessed batch (N, C, H, W) (used by bench)."""
        return self.bundle.run({"image": x.astype(np.float32)})["logits"]
