"""Torch-free predictor for image-classification bundles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medtransfer.shared.imagetask.data import SUFFIXES, read_image
from medtransfer.shared.runtime.gates import mark_unreliable
from medtransfer.shared.runtime.predictor import Predictor, softmax


class ImagePredictor(Predictor):
    """Label and class probabilities for one image; blank / constant images are marked unreliable."""

    suffixes = SUFFIXES
    modalities = ("image",)

    def predict(self, path: Path, **case: Any) -> dict[str, Any]:
        """Answer one image.

        Args:
            path: the image file.
            case: extra manifest columns (unused).

        Returns:
            ``label``, ``probability``, ``probabilities`` (+ ``unreliable`` / ``reasons`` for implausible input).
        """
        x, reasons = read_image(
            path, self.bundle.preprocessing, self.bundle.meta.get("gates") or None, self.input_hook("image")
        )
        logits = self.bundle.run({"image": x[None]})["logits"][0]
        prob = softmax(logits.astype(np.float64))
        labels = self.bundle.labels
        k = int(np.argmax(prob))
        res: dict[str, Any] = {
            "label": labels[k],
            "probability": float(prob[k]),
            "probabilities": {lab: round(float(p), 6) for lab, p in zip(labels, prob)},
        }
        if reasons:
            mark_unreliable(res, reasons)
        return res
