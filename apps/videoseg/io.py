"""Torch-free readers and writers for videos and mask stacks.

Videos are read lazily, one frame at a time: AVI / MP4 through OpenCV, a folder of image frames
(PNG / JPEG / TIFF, sorted by the number in the name), and MetaImage ``.mha`` cine stacks through
SimpleITK (TrackRAD2025 stores a whole cine in one ``.mha``; its frames lie along the fastest file
axis, so the file is read once and then served frame by frame).  Frames come out as ``uint8``
grey ``(H, W)`` arrays.

Masks: a ``(T, H, W)`` stack in ``.npy`` / ``.npz`` (key ``masks``, optional ``frames`` listing the
frame index of each mask when only some frames are labelled), ``.mha``, or a folder of PNGs named
by frame number.  Frames without a mask are allowed.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import numpy as np

from medtransfer.shared.utils.errors import InputError

VIDEO_SUFFIXES = (".avi", ".mp4", ".mov", ".mkv", ".mha", ".mhd")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _frame_number(p: Path) -> int:
    nums = re.findall(r"\d+", p.stem)
    return int(nums[-1]) if nums else -1


def _to_uint8(a: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    a = a.astype(np.float32)
    lo = float(np.min(a)) if lo is None else lo
    hi = float(np.max(a)) if hi is None else hi
    return np.clip((a - lo) / max(hi - lo, 1e-6) * 255.0, 0, 255).astype(np.uint8)


def mha_time_first(arr: np.ndarray, time_axis: str | int = "auto") -> np.ndarray:
    """Put the time axis of a 3-D ``.mha`` array first.

    TrackRAD2025 writes cines as numpy ``(H, W, T)`` arrays (time last); a generic stack is
    ``(T, H, W)``.  ``auto`` takes the last axis as time when the first two are equal and the
    last differs (TrackRAD's square frames), else the first.
    """
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim != 3:
        raise ValueError(f"expected a 3-D stack, got shape {arr.shape}")
    if time_axis == "auto":
        time_axis = -1 if (arr.shape[0] == arr.shape[1] and arr.shape[2] != arr.shape[0]) else 0
    return np.moveaxis(arr, int(time_axis), 0)


class VideoReader:
    """Lazy frame reader.

    Args:
        path: AVI/MP4 file, ``.mha`` cine, or a folder of frame images.
        time_axis: for ``.mha``: ``auto``, 0 or -1 (see :func:`mha_time_first`).

    Attributes:
        n_frames: number of frames (from the container header; checked while reading).
        height, width: frame size.
        fps: frame rate when known (else 0).

    Raises:
        InputError: missing, unreadable, empty or truncated video.
    """

    def __init__(self, path: str | Path, time_axis: str | int = "auto") -> None:
        self.path = Path(path)
        self.time_axis = time_axis
        self.fps = 0.0
        self._stack: np.ndarray | None = None
        self._files: list[Path] = []
        if not self.path.exists():
            raise InputError(self.path, "video not found")
        if self.path.is_dir():
            self.kind = "folder"
            self._files = sorted(
                (p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: (_frame_number(p), p.name)
            )
            if not self._files:
                raise InputError(self.path, "frame folder holds no PNG/JPEG/TIFF frames")
            first = self._read_image(self._files[0])
            self.n_frames = len(self._files)
            self.height, self.width = first.shape
        elif self.path.suffix.lower() in (".mha", ".mhd", ".nii", ".gz"):
            self.kind = "mha"
            try:
                import SimpleITK as sitk

                arr = sitk.GetArrayFromImage(sitk.ReadImage(str(self.path)))
            except Exception as e:  # noqa: BLE001
                raise InputError(self.path, f"unreadable image stack ({str(e).splitlines()[0][:80] if str(e) else type(e).__name__})") from None
            arr = mha_time_first(arr, time_axis)
            lo, hi = np.percentile(arr[0], [0.5, 99.5]) if arr.dtype != np.uint8 else (None, None)
            self._stack = _to_uint8(arr, lo, hi)
            self.n_frames, self.height, self.width = self._stack.shape
        else:
            self.kind = "video"
            import cv2

            cap = cv2.VideoCapture(str(self.path))
            if not cap.isOpened():
                raise InputError(self.path, "not a readable video (OpenCV could not open it)")
            self.n_frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
            ok, fr = cap.read()
            cap.release()
            if not ok or fr is None:
                raise InputError(self.path, "video has no decodable frame (corrupt or truncated)")
            self.height, self.width = fr.shape[:2]
        if self.n_frames <= 0:
            raise InputError(self.path, "video has no frames")

    def _read_image(self, p: Path) -> np.ndarray:
        import cv2

        im = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        if im is None:
            raise InputError(p, "unreadable frame image")
        if im.ndim == 3:
            im = cv2.cvtColor(im[..., :3], cv2.COLOR_BGR2GRAY)
        return _to_uint8(im)

    def __len__(self) -> int:
        return self.n_frames

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.frames()

    def frames(self, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
        """Yield grey uint8 frames ``start..stop-1`` one by one.

        Raises:
            InputError: the file ends before its header's frame count (truncated video).
        """
        stop = self.n_frames if stop is None else min(stop, self.n_frames)
        if self.kind == "mha":
            assert self._stack is not None
            for i in range(start, stop):
                yield self._stack[i]
        elif self.kind == "folder":
            for p in self._files[start:stop]:
                fr = self._read_image(p)
                if fr.shape != (self.height, self.width):
                    raise InputError(p, f"frame size {fr.shape} differs from the first frame's {(self.height, self.width)}")
                yield fr
        else:
            import cv2

            cap = cv2.VideoCapture(str(self.path))
            try:
                if start:
                    cap.set(cv2.CAP_PROP_POS_FRAMES, start)
                for i in range(start, stop):
                    ok, fr = cap.read()
                    if not ok or fr is None:
                        raise InputError(self.path, f"video truncated: frame {i} of {self.n_frames} could not be decoded")
                    yield cv2.cvtColor(fr, cv2.COLOR_BGR2GRAY)
            finally:
                cap.release()

    def read(self, indices: list[int] | None = None) -> np.ndarray:
        """Frames at ``indices`` (all when None) as a (K, H, W) uint8 array (reads sequentially)."""
        want = sorted(set(range(self.n_frames) if indices is None else indices))
        if want and (want[0] < 0 or want[-1] >= self.n_frames):
            raise InputError(self.path, f"frame index out of range 0..{self.n_frames - 1}")
        got: dict[int, np.ndarray] = {}
        if want:
            for i, fr in enumerate(self.frames(want[0], want[-1] + 1), start=want[0]):
                if i in want:
                    got[i] = fr
        order = range(self.n_frames) if indices is None else indices
        return np.stack([got[i] for i in order]) if got else np.zeros((0, self.height, self.width), np.uint8)


def open_video(path: str | Path, time_axis: str | int = "auto") -> VideoReader:
    """Open a video for lazy reading (see :class:`VideoReader`)."""
    return VideoReader(path, time_axis=time_axis)


def read_masks(path: str | Path, n_frames: int | None = None, time_axis: str | int = "auto") -> dict[int, np.ndarray]:
    """Read a mask stack as ``{frame_index: (H, W) uint8 0/1}`` (frames without a mask absent).

    Args:
        path: ``.npy`` / ``.npz`` / ``.mha`` stack, a PNG folder, or one PNG (frame 0's mask).
        n_frames: the video's frame count, to check the stack against.
        time_axis: for ``.mha`` (see :func:`mha_time_first`).

    Raises:
        InputError: missing or unreadable file, wrong dimensions, too many frames.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "mask file not found")
    out: dict[int, np.ndarray] = {}
    try:
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise InputError(path, "mask folder holds no PNG masks")
            import cv2

            for p in files:
                m = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
                if m is None:
                    raise InputError(p, "unreadable mask image")
                out[_frame_number(p)] = (m > 0).astype(np.uint8)
        elif path.suffix.lower() in IMAGE_SUFFIXES:  # one mask image = the first frame's mask
            import cv2

            m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            if m is None:
                raise InputError(path, "unreadable mask image")
            out = {0: (m > 0).astype(np.uint8)}
        elif path.suffix.lower() in (".npy", ".npz"):
            data = np.load(path, allow_pickle=False)
            if isinstance(data, np.lib.npyio.NpzFile):
                key = "masks" if "masks" in data.files else data.files[0]
                arr = np.asarray(data[key])
                frames = np.asarray(data["frames"]).tolist() if "frames" in data.files else None
            else:
                arr, frames = np.asarray(data), None
            if arr.ndim == 2:
                arr = arr[None]
            if arr.ndim != 3:
                raise InputError(path, f"mask stack must be (T, H, W), got shape {arr.shape}")
            frames = frames if frames is not None else list(range(arr.shape[0]))
            if len(frames) != arr.shape[0]:
                raise InputError(path, "'frames' and 'masks' lengths differ")
            out = {int(f): (arr[i] > 0).astype(np.uint8) for i, f in enumerate(frames)}
        elif path.suffix.lower() in (".mha", ".mhd", ".nii", ".gz"):
            import SimpleITK as sitk

            arr = mha_time_first(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), time_axis)
            out = {i: (arr[i] > 0).astype(np.uint8) for i in range(arr.shape[0])}
        else:
            raise InputError(path, "unsupported mask format (use .npy, .npz, .mha, .png or a PNG folder)")
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001
        raise InputError(path, f"unreadable mask file ({type(e).__name__})") from None
    if n_frames is not None and out and max(out) >= n_frames:
        raise InputError(path, f"mask for frame {max(out)} but the video has {n_frames} frames")
    return out


def write_masks(path: str | Path, masks: np.ndarray, frames: list[int] | None = None) -> Path:
    """Write a (T, H, W) uint8 stack as ``.npz`` (``masks`` and optional ``frames``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {} if frames is None else {"frames": np.asarray(frames, dtype=np.int32)}
    np.savez_compressed(path, masks=np.asarray(masks, dtype=np.uint8), **extra)
    return path


def write_avi(path: str | Path, frames: np.ndarray, fps: float = 50.0) -> Path:
    """Write grey uint8 frames (T, H, W) as an MJPG AVI (the EchoNet container)."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t, h, w = frames.shape
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h), True)
    for fr in frames:
        vw.write(cv2.cvtColor(fr, cv2.COLOR_GRAY2BGR))
    vw.release()
    return path


def overlay_gif(path: str | Path, frames: Iterator[np.ndarray] | np.ndarray, masks: np.ndarray, fps: float = 10.0, max_side: int = 256) -> Path:
    """Write an animated GIF: grey frames with the mask outline in red (for people to look at)."""
    import cv2
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ims = []
    for fr, m in zip(frames, masks):
        rgb = cv2.cvtColor(fr, cv2.COLOR_GRAY2RGB)
        cnts, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(rgb, cnts, -1, (255, 40, 40), 1)
        s = max_side / max(rgb.shape[:2])
        if s < 1:
            rgb = cv2.resize(rgb, (int(rgb.shape[1] * s), int(rgb.shape[0] * s)), interpolation=cv2.INTER_AREA)
        ims.append(Image.fromarray(rgb))
    if not ims:
        raise ValueError("no frames to write")
    ims[0].save(path, save_all=True, append_images=ims[1:], duration=int(1000 / max(fps, 1)), loop=0)
    return path
