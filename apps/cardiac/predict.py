"""Torch-free cardiac predictor: per-frame and aggregated view + grade, with an 'unreliable' flag.

A frame is unreliable when its view is ``Random``, its max softmax is below the threshold
calibrated on validation (``metadata.ood.msp_threshold``), or no fan-shaped sector was found.
A cine is aggregated by averaging frame probabilities and grades over its reliable frames (all
frames when none is reliable); the cine is unreliable when most of its frames are.  Blank /
constant input (``gates.image_content_reasons``) is always unreliable, with the reason.
Artefacts (the contact sheet) are written only under ``out_dir`` (``OUT/<input key>/crops.png``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medtransfer.apps.cardiac.io import ALL_SUFFIXES, list_inputs, read_frames, require_readers
from medtransfer.apps.cardiac.preprocess import contact_sheet, crop_sector, normalise
from medtransfer.shared.runtime import gates
from medtransfer.shared.runtime.bundle import Bundle
from medtransfer.shared.runtime.predictor import Opt, Predictor, softmax


def _truthy(v: Any) -> bool:
    return str(v).lower() in ("1", "true", "yes", "on")


class CardiacPredictor(Predictor):
    """Answers one echo file (image, DICOM, GIF/AVI/MP4).

    Options (``--opt``): ``max_frames`` (default 32), ``batch`` (default 16), ``contact_sheet``
    (write the crops used as ``<out_dir>/<input key>/crops.png``; also on with ``--plot``; needs
    ``out_dir``: nothing is written beside the inputs),
    ``msp_threshold`` (override the calibrated threshold), ``model`` (``model.onnx`` default).
    """

    suffixes = ALL_SUFFIXES
    modalities = ("image",)
    options_spec = {
        "max_frames": Opt("int", 1, 100_000),
        "batch": Opt("int", 1, 4096),
        "contact_sheet": Opt("flag"),
        "msp_threshold": Opt("number", 0.0, 1.0),
        "model": Opt("text"),
    }

    def __init__(self, bundle: Bundle, **options: Any) -> None:
        require_readers()  # one line naming medtransfer[cardiac] when a reader is not installed
        super().__init__(bundle, **options)
        self.params = bundle.preprocessing
        self.labels = bundle.labels
        ood = dict(bundle.meta.get("ood") or {})
        opts = {k: v for k, v in self.options.items() if v is not None}  # checked and converted
        self.msp_threshold = float(opts.get("msp_threshold", ood.get("msp_threshold", 0.5)))
        self.max_frames = int(opts.get("max_frames", 32))
        self.batch = int(opts.get("batch", 16))
        self.model_file = str(opts.get("model", "model.onnx"))
        self.gates = dict(bundle.meta.get("gates") or {})
        outs = dict(bundle.meta.get("outputs") or {})
        # which heads the exported run trained (a CACTUS pure-transfer grade run did not train the view head)
        self.trained = {
            "view": bool((outs.get("view_logits") or {}).get("trained", True)),
            "grade": bool((outs.get("grade") or {}).get("trained", True)),
        }

    def list_inputs(self, folder: Path) -> list[Path]:
        """Echo files under ``folder`` for ``score --input-dir``.

        Raises:
            InputError: an empty folder ("no images found (looked for .png, .jpg, ...)").
        """
        return list_inputs(folder)

    def run_batch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(view logits, grades) for a float32 batch, in chunks of ``batch``."""
        logits, grades = [], []
        for i in range(0, len(x), self.batch):
            out = self.bundle.run({"image": x[i : i + self.batch]}, name=self.model_file)
            logits.append(out["view_logits"])
            grades.append(out["grade"].reshape(-1))
        return np.concatenate(logits), np.concatenate(grades)

    def predict(self, path: Path, **case: Any) -> dict[str, Any]:
        """Per-frame and aggregated results for one file."""
        path = Path(path)
        frames, info = read_frames(path, max_frames=self.max_frames, overrides=self.gates)
        if self.input_hook("image") is not None:  # medtransfer audit: each frame perturbed
            frames = [self.perturbed(f, "image", vmax=255.0) for f in frames]
        content = gates.image_content_reasons(frames, self.gates)
        crops, sectors = [], []
        for fr in frames:
            c, s = crop_sector(fr, self.params)
            crops.append(c)
            sectors.append(s)
        logits, grades = self.run_batch(normalise(crops, self.params))
        probs = softmax(logits.astype(np.float64), axis=1)
        per_frame = []
        for k in range(len(frames)):
            vi = int(probs[k].argmax())
            reasons = []
            if self.labels[vi] == "Random":
                reasons.append("Random view")
            if probs[k, vi] < self.msp_threshold:
                reasons.append(f"low confidence {probs[k, vi]:.2f} < {self.msp_threshold:.2f}")
            if not sectors[k]["found"]:
                reasons.append("no ultrasound sector: " + sectors[k]["reason"])
            per_frame.append(
                {
                    "frame": k,
                    "view": self.labels[vi],
                    "view_prob": round(float(probs[k, vi]), 4),
                    "grade": round(float(grades[k]), 3),
                    "unreliable": bool(reasons),
                    "reasons": reasons,
                }
            )
        ok = np.array([not f["unreliable"] for f in per_frame])
        use = ok if ok.any() else np.ones(len(per_frame), bool)
        mp = probs[use].mean(0)
        vi = int(mp.argmax())
        n_unrel = int((~ok).sum())
        reasons = sorted({r.split(":")[0].split(" 0")[0] for f in per_frame for r in f["reasons"]})
        res: dict[str, Any] = {
            "file": path.name,
            "kind": info.get("kind"),
            "n_frames": len(frames),
            "view": self.labels[vi],
            "view_prob": round(float(mp[vi]), 4),
            "probs": {lab: round(float(p), 4) for lab, p in zip(self.labels, mp)},
            "grade": round(float(np.mean(grades[use])), 3),
            "unreliable": bool(n_unrel * 2 > len(per_frame) or self.labels[vi] == "Random"),
            "unreliable_frames": n_unrel,
            "reasons": reasons,
            "trained_heads": dict(self.trained),
            "sector": {k: v for k, v in sectors[0].items()},
            **self.bundle.provenance(),
        }
        if content:
            gates.mark_unreliable(res, content)
        if len(frames) > 1:
            res["frames"] = per_frame
        if _truthy(self.options.get("contact_sheet", False)) or _truthy(self.options.get("plot", False)):
            out_dir = self.output_dir(path)
            if out_dir is None:
                res["contact_sheet"] = None
                res["artefacts"] = "not written: give --out DIR (nothing is written beside the inputs)"
            else:
                out_dir.mkdir(parents=True, exist_ok=True)
                titles = [
                    f"#{f['frame']} {f['view']} {f['view_prob']:.2f} g{f['grade']:.1f}{' !' if f['unreliable'] else ''}"
                    for f in per_frame
                ]
                res["contact_sheet"] = str(contact_sheet(crops, titles, out_dir / "crops.png"))
        return res
