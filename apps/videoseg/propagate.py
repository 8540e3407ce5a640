"""Streaming propagation of one object through a video, torch-free (numpy glue).

The loop follows SAM2's ``track_step`` for forward tracking of one object from one prompt
frame: the prompt frame is decoded from a box (or taken from a mask), every later frame is
conditioned on the prompt frame's memory, the last ``num_maskmem - 1`` frames' memories and up
to ``max_obj_ptrs - 1`` recent object pointers, then decoded and encoded into memory.  Only those
bounded memories are kept (frames are read lazily and dropped), so memory stays flat as videos
get longer.  The four networks come from a *backend*: ONNX Runtime sessions (``predict.py``) or
the PyTorch modules (``model.TorchBackend``); the glue is the same, which is what the ONNX parity
check compares.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Iterable, Iterator, Protocol

import numpy as np

from medtransfer.shared.utils.errors import InputError

MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]


class Backend(Protocol):
    """The networks the loop needs (numpy in, numpy out).  ``consts`` holds the small tensors."""

    consts: dict[str, np.ndarray]

    def encode_image(self, image: np.ndarray) -> tuple[np.ndarray, ...]: ...  # feat, pos, hr0, hr1
    def decode(
        self, kind: str, pix: np.ndarray, hr0: np.ndarray, hr1: np.ndarray, *prompt: np.ndarray
    ) -> tuple[np.ndarray, ...]: ...
    def encode_memory(
        self, feat: np.ndarray, mask_logits: np.ndarray, score: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]: ...
    def attend(
        self,
        curr: np.ndarray,
        curr_pos: np.ndarray,
        mem: np.ndarray,
        mem_pos: np.ndarray,
        ptr: np.ndarray,
        ptr_pos: np.ndarray,
    ) -> np.ndarray: ...


def preprocess(frame: np.ndarray, size: int) -> np.ndarray:
    """Grey uint8 (H, W) frame -> (1, 3, S, S) float32, ImageNet-normalised (SAM2's input)."""
    import cv2

    x = cv2.resize(frame, (size, size), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
    x = np.repeat(x[None], 3, axis=0)
    return ((x - MEAN) / STD)[None].astype(np.float32)


def preprocessing_spec(size: int) -> dict[str, Any]:
    """What :func:`preprocess` does, for the bundle's metadata (built from the same constants)."""
    return {
        "image_size": int(size),
        "resize": "cv2.INTER_LINEAR to SxS",
        "scale": "1/255",
        "mean": [float(v) for v in MEAN.ravel()],
        "std": [float(v) for v in STD.ravel()],
        "grey_to_rgb": True,
        "function": f"{preprocess.__module__}.preprocess",
    }


def sine_pe_1d(pos: np.ndarray, dim: int, temperature: float = 10000.0) -> np.ndarray:
    """SAM2's ``get_1d_sine_pe`` in numpy: (N,) -> (N, dim)."""
    pe_dim = dim // 2
    dim_t = np.arange(pe_dim, dtype=np.float32)
    dim_t = temperature ** (2 * (dim_t // 2) / pe_dim)
    pe = pos.astype(np.float32)[:, None] / dim_t
    return np.concatenate([np.sin(pe), np.cos(pe)], axis=-1).astype(np.float32)


def check_box(box: Iterable[float], height: int, width: int, where: str = "box") -> np.ndarray:
    """Validate an ``x0,y0,x1,y1`` box against the frame size.

    Raises:
        InputError: malformed, empty, or outside the image.
    """
    b = np.asarray(list(box), dtype=np.float32)
    if b.shape != (4,) or not np.all(np.isfinite(b)):
        raise InputError(where, "box must be four numbers x0,y0,x1,y1")
    if b[2] <= b[0] or b[3] <= b[1]:
        raise InputError(where, f"box {b.tolist()} is empty (need x1 > x0 and y1 > y0)")
    if b[0] < 0 or b[1] < 0 or b[2] > width or b[3] > height:
        raise InputError(where, f"box {b.tolist()} lies outside the {width}x{height} image")
    return b


def mask_to_box(mask: np.ndarray) -> np.ndarray:
    """Tight ``x0,y0,x1,y1`` box (pixel edges) of a non-empty mask."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def _seq(x: np.ndarray, c: int, hw: int) -> np.ndarray:
    """(1, C, h, w) -> contiguous sequence-first (hw, C) float32 (done once per stored memory)."""
    return np.ascontiguousarray(x.reshape(c, hw).T, dtype=np.float32)


class StreamingPropagator:
    """Propagate one prompted object through a stream of frames with bounded memory.

    Args:
        backend: the networks (ONNX or PyTorch).
    """

    def __init__(self, backend: Backend) -> None:
        self.b = backend
        c = backend.consts
        self.size = int(c["image_size"])
        self.num_maskmem = int(c["num_maskmem"])
        self.max_obj_ptrs = int(c["max_obj_ptrs"])
        self.mem_dim = int(c["mem_dim"])
        self.no_mem_embed = c["no_mem_embed"].reshape(1, -1, 1, 1)
        self.tpos_enc = c["maskmem_tpos_enc"].reshape(self.num_maskmem, 1, self.mem_dim)
        self.tpos_w, self.tpos_b = c["obj_ptr_tpos_w"], c["obj_ptr_tpos_b"]

    def _obj_pos(self, pos: np.ndarray, max_ptrs: int) -> np.ndarray:
        pe = sine_pe_1d(pos / max(max_ptrs - 1, 1), self.tpos_w.shape[1])
        return pe @ self.tpos_w.T + self.tpos_b  # (N, mem_dim)

    def encoded(self, frames: Iterable[np.ndarray], prefetch: bool = False) -> Iterator[tuple[np.ndarray, tuple]]:
        """Yield ``(frame, image-encoder outputs)``; with ``prefetch`` the encoder works on frame
        t+1 in a second thread while the caller tracks frame t (at most two frames in flight).

        Frames are read in the calling thread (readers need not be thread-safe).
        """
        S = self.size
        if not prefetch:
            for fr in frames:
                yield fr, tuple(self.b.encode_image(preprocess(fr, S)))
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1, thread_name_prefix="videoseg-encoder") as ex:
            pending = None
            for fr in frames:
                fut = ex.submit(self.b.encode_image, preprocess(fr, S))
                if pending is not None:
                    yield pending[0], tuple(pending[1].result())
                pending = (fr, fut)
            if pending is not None:
                yield pending[0], tuple(pending[1].result())

    def run(
        self,
        frames: Iterable[np.ndarray],
        n_frames: int,
        box: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        return_logits: bool = False,
        prefetch: bool | None = None,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(t, mask)`` for every frame, frame 0 being the prompt frame.

        Args:
            frames: grey uint8 frames (any iterable: read lazily from the file).
            n_frames: total frame count (SAM2 normalises pointer distances with it).
            box: ``x0,y0,x1,y1`` in frame pixels (prompt), or
            mask: (H, W) 0/1 first-frame mask (prompt).
            return_logits: yield (S, S) float logits instead of (H, W) uint8 masks.
            prefetch: encode frame t+1 in a second thread while frame t is tracked (same masks);
                None: the backend's ``prefetch`` (False when it has none).
        """
        import cv2

        if (box is None) == (mask is None):
            raise ValueError("give exactly one prompt: box or mask")
        S, C = self.size, self.mem_dim
        if prefetch is None:
            prefetch = getattr(self.b, "prefetch", False) is True
        cond: dict[str, np.ndarray] = {}
        # memories are kept sequence-first (hw, C), transposed once when stored; memory attention's
        # inputs are written into buffers reused every frame (no per-frame re-layout of old memories)
        mems: deque[tuple[int, np.ndarray, np.ndarray]] = deque(maxlen=self.num_maskmem - 1)
        max_ptrs = min(n_frames, self.max_obj_ptrs)
        ptrs: deque[tuple[int, np.ndarray]] = deque(maxlen=max(max_ptrs - 1, 1))
        buf: dict[str, np.ndarray] = {}
        for t, (fr, enc) in enumerate(self.encoded(frames, prefetch)):
            H, W = fr.shape
            feat, pos, hr0, hr1 = enc
            if t == 0:
                if box is not None:
                    b = check_box(box, H, W)
                    pts = np.array([[[b[0] * S / W, b[1] * S / H], [b[2] * S / W, b[3] * S / H]]], np.float32)
                    lab = np.array([[2, 3]], np.int32)
                    low, high, ptr, score = self.b.decode("box", feat + self.no_mem_embed, hr0, hr1, pts, lab)
                else:
                    if mask.shape != (H, W):
                        raise InputError("mask", f"mask size {mask.shape} differs from frame size {(H, W)}")
                    m = cv2.resize(mask.astype(np.float32), (S, S), interpolation=cv2.INTER_AREA) >= 0.5
                    if not m.any():
                        raise InputError("mask", "first-frame mask is empty")
                    low, high, ptr, score = self.b.decode("mask", feat, hr0, hr1, m[None, None].astype(np.float32))
                mf, mp = self.b.encode_memory(feat, high, score)
                hw = feat.shape[2] * feat.shape[3]
                cond = {"feat": _seq(mf, C, hw), "pos": _seq(mp, C, hw), "ptr": ptr}
                buf = {
                    "mem": np.empty((self.num_maskmem * hw, 1, C), np.float32),
                    "mem_pos": np.empty((self.num_maskmem * hw, 1, C), np.float32),
                }
            else:
                hw = feat.shape[2] * feat.shape[3]
                # spatial memories: prompt frame (t_pos 0) then previous frames, oldest first
                chosen = [(0, cond["feat"], cond["pos"])]
                for tt, f_, p_ in mems:
                    t_pos = self.num_maskmem - (t - tt)
                    if t_pos >= 1:
                        chosen.append((t_pos, f_, p_))
                mem, mem_pos = buf["mem"][: len(chosen) * hw], buf["mem_pos"][: len(chosen) * hw]
                for i, (tp, f_, p_) in enumerate(chosen):
                    mem[i * hw : (i + 1) * hw, 0] = f_
                    np.add(p_, self.tpos_enc[self.num_maskmem - tp - 1], out=mem_pos[i * hw : (i + 1) * hw, 0])
                # object pointers: prompt frame, then the most recent frames
                pl = [(t - 0, cond["ptr"])] + [(t - tt, p) for tt, p in reversed(ptrs) if 1 <= t - tt < max_ptrs]
                pos_arr = np.array([p for p, _ in pl], np.float32)
                ptr_arr = np.concatenate([p for _, p in pl], 0)  # (N, 256)
                k = ptr_arr.shape[1] // C
                ptr_tok = ptr_arr.reshape(-1, k, C).reshape(-1, 1, C)
                ptr_pos = np.repeat(self._obj_pos(pos_arr, max_ptrs), k, axis=0)[:, None]
                curr = feat.reshape(1, -1, hw).transpose(2, 0, 1)
                curr_pos = pos.reshape(1, -1, hw).transpose(2, 0, 1)
                pix = self.b.attend(
                    curr,
                    curr_pos,
                    mem,
                    mem_pos,
                    ptr_tok.astype(np.float32),
                    ptr_pos.astype(np.float32),
                )
                pix = pix.transpose(1, 2, 0).reshape(feat.shape)
                low, high, ptr, score = self.b.decode("track", pix, hr0, hr1)
                mf, mp = self.b.encode_memory(feat, high, score)
                mems.append((t, _seq(mf, C, hw), _seq(mp, C, hw)))
                ptrs.append((t, ptr))
            logits = high[0, 0]
            if return_logits:
                yield t, logits
            else:
                yield t, (cv2.resize(logits, (W, H), interpolation=cv2.INTER_LINEAR) > 0).astype(np.uint8)
