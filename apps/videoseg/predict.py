"""Torch-free prediction: the streaming loop on ONNX Runtime, reading the video lazily.

``medtransfer predict BUNDLE VIDEO --box x0,y0,x1,y1 | --mask FIRST_FRAME_MASK --out DIR`` writes
``DIR/<input key>/masks.npz`` (``masks``: (T, H, W) uint8) and ``overlay.gif`` beside it (``--opt
gif=false`` skips the GIF).  The input key is the video's path relative to the input root without
its last suffix (``pt.v1.mha`` -> ``pt.v1``), so two inputs never share an output folder.  Without
``--out`` nothing is written (the answer says so).  Imports no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medtransfer.apps.videoseg.io import VIDEO_SUFFIXES, open_video, overlay_gif, read_masks
from medtransfer.apps.videoseg.propagate import StreamingPropagator, check_box
from medtransfer.shared.runtime import gates
from medtransfer.shared.runtime.bundle import Bundle
from medtransfer.shared.runtime.predictor import Predictor
from medtransfer.shared.utils.errors import InputError


class OnnxBackend:
    """The bundle's ONNX graphs behind the numpy interface of the streaming loop."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        with np.load(bundle.path / "constants.npz") as z:
            self.consts = {k: z[k] for k in z.files}
        self.enc = bundle.session("image_encoder.onnx")
        self.dec = {
            "box": bundle.session("decoder_box.onnx"),
            "track": bundle.session("decoder_track.onnx"),
            "mask": bundle.session("mask_prompt.onnx"),
        }
        self.menc = bundle.session("memory_encoder.onnx")
        self.matt = bundle.session("memory_attention.onnx")

    def encode_image(self, image: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(self.enc.run(None, {"image": image}))

    def decode(
        self, kind: str, pix: np.ndarray, hr0: np.ndarray, hr1: np.ndarray, *prompt: np.ndarray
    ) -> tuple[np.ndarray, ...]:
        feeds = {"pix_feat": pix.astype(np.float32), "hr0": hr0, "hr1": hr1}
        if kind == "track":
            feeds.update(coords=np.zeros((1, 1, 2), np.float32), labels=-np.ones((1, 1), np.int32))
        elif kind == "box":
            feeds.update(coords=prompt[0], labels=prompt[1])
        else:
            feeds["mask"] = prompt[0]
        return tuple(self.dec[kind].run(None, feeds))

    def encode_memory(
        self, feat: np.ndarray, mask_logits: np.ndarray, score: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.menc.run(None, {"vision_feat": feat, "mask_logits": mask_logits, "object_score": score})
        return a, b

    def attend(
        self,
        curr: np.ndarray,
        curr_pos: np.ndarray,
        mem: np.ndarray,
        mem_pos: np.ndarray,
        ptr: np.ndarray,
        ptr_pos: np.ndarray,
    ) -> np.ndarray:
        return self.matt.run(
            None, {"curr": curr, "curr_pos": curr_pos, "mem": mem, "mem_pos": mem_pos, "ptr": ptr, "ptr_pos": ptr_pos}
        )[0]


def parse_box(box: Any) -> list[float]:
    """``"x0,y0,x1,y1"`` or a sequence -> four floats."""
    if isinstance(box, str):
        try:
            return [float(v) for v in box.split(",")]
        except ValueError:
            raise InputError("--box", f"'{box}' is not x0,y0,x1,y1") from None
    return [float(v) for v in box]


class VideoSegPredictor(Predictor):
    """Track one object through a video from a first-frame box or mask.

    Options: ``out_dir`` (masks.npz and the GIF go to ``out_dir/<input key>/``; none: nothing is
    written), ``input_root`` (set by predict / score), ``gif`` (default on),
    ``box`` / ``mask`` (default prompt), ``max_frames`` (0 = all).
    """

    suffixes = VIDEO_SUFFIXES
    accepts_folders = True  # frame folders are videos too (score's input check lets folders through)

    def __init__(self, bundle: Bundle, **options: Any) -> None:
        super().__init__(bundle, **options)
        self.prop = StreamingPropagator(OnnxBackend(bundle))

    def predict(self, path: Path, **case: Any) -> dict[str, Any]:
        """Propagate; returns paths of the outputs and a per-frame area summary.

        Raises:
            InputError: bad video, no prompt, prompt outside the image, empty or mis-sized mask.
        """
        path = Path(path)
        reader = open_video(path, overrides=self.bundle.meta.get("gates") or None)
        box = case.get("box") or self.options.get("box")
        mask_path = case.get("mask") or self.options.get("mask")
        n = reader.n_frames
        mf = int(self.options.get("max_frames") or 0)
        if mf:
            n = min(n, mf)
        mask = None
        if mask_path:
            ms = read_masks(mask_path)
            first = ms.get(0, next(iter(ms.values())) if ms else None)
            if first is None or not first.any():
                raise InputError(mask_path, "first-frame mask is empty")
            if first.shape != reader.shape:
                raise InputError(mask_path, f"mask size {first.shape} differs from video frame size {reader.shape}")
            mask = first
        elif box:
            b = check_box(parse_box(box), reader.height, reader.width, where=str(path))
            box = b
        else:
            raise InputError(path, "no prompt: give --box x0,y0,x1,y1 or --mask FIRST_FRAME_MASK")
        content = gates.image_content_reasons(reader.read([0]), self.bundle.meta.get("gates") or None)
        out = np.zeros((n, reader.height, reader.width), np.uint8)
        for t, m in self.prop.run(reader.frames(0, n), n, box=None if mask is not None else box, mask=mask):
            out[t] = m
        out_dir = self.output_dir(path)
        res: dict[str, Any] = {
            "input": str(path),
            "frames": int(n),
            "height": reader.height,
            "width": reader.width,
            "masks": None,
            "area_first": int(out[0].sum()),
            "area_mean": float(out.reshape(n, -1).sum(1).mean()),
            "empty_frames": int((out.reshape(n, -1).sum(1) == 0).sum()),
        }
        if out_dir is None:
            res["artefacts"] = (
                "not written: give --out DIR for masks.npz and overlay.gif (nothing is written beside the inputs)"
            )
        else:
            out_dir.mkdir(parents=True, exist_ok=True)
            npz = out_dir / "masks.npz"
            np.savez_compressed(npz, masks=out)
            res["masks"] = str(npz)
            if str(self.options.get("gif", True)).lower() not in ("false", "0", "no"):
                res["overlay"] = str(
                    overlay_gif(out_dir / "overlay.gif", reader.frames(0, n), out, fps=reader.fps or 10)
                )
        if content:
            gates.mark_unreliable(res, [f"first frame: {r}" for r in content])
        res.update(self.bundle.provenance())
        return res
