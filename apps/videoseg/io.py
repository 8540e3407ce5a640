"""Torch-free readers and writers for videos and mask stacks.

Videos are read lazily, one frame at a time: AVI / MP4 through OpenCV, a folder of image frames
(PNG / JPEG / TIFF, sorted by the number in the name), and MetaImage ``.mha`` cine stacks through
SimpleITK (TrackRAD2025 stores a whole cine in one ``.mha``; its frames lie along the fastest file
axis, so the file is read once and then served frame by frame).  Frames come out as ``uint8``
grey ``(H, W)`` arrays.

Masks: a ``(T, H, W)`` stack in ``.npy`` / ``.npz`` (key ``masks``, optional ``frames`` listing the
frame index of each mask when only some frames are labelled), ``.mha``, or a folder of PNGs named
by frame number.  Frames without a mask are allowed.

Every reader checks the size its header declares (frame width / height / count: OpenCV
``CAP_PROP_FRAME_*``, SimpleITK ``ReadImageInformation``, the PIL / ``.npy`` header) against
``shared.runtime.gates`` BEFORE decoding pixels, and turns the library's exceptions into one-line
:class:`InputError` (never quoting file content).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from medtransfer.shared.runtime import gates
from medtransfer.shared.utils.errors import InputError
from medtransfer.shared.utils.sniff import is_dicom
from medtransfer.shared.utils.video import open_capture

VIDEO_SUFFIXES = (".avi", ".mp4", ".mov", ".mkv", ".mha", ".mhd")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _frame_number(p: Path) -> int:
    nums = re.findall(r"\d+", p.stem)
    return int(nums[-1]) if nums else -1


def _to_uint8(a: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    a = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
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


def _stack_shape(size_xyz: tuple[int, ...], time_axis: str | int = "auto") -> tuple[int, int, int]:
    """(frames, height, width) of an image stack from its SimpleITK size (x, y[, z]), no pixels read."""
    shape = tuple(int(v) for v in reversed(size_xyz))  # numpy order, as GetArrayFromImage gives it
    if len(shape) == 2:
        return 1, shape[0], shape[1]
    if time_axis == "auto":
        time_axis = -1 if (shape[0] == shape[1] and shape[2] != shape[0]) else 0
    t = shape[int(time_axis)]
    rest = [v for i, v in enumerate(shape) if i != (int(time_axis) % 3)]
    return t, rest[0], rest[1]


def read_stack(path: Path, time_axis: str | int = "auto", overrides: Mapping[str, Any] | None = None) -> np.ndarray:
    """Read a ``.mha`` / ``.mhd`` / NIfTI stack as a numpy array (time first), header checked first.

    ``ImageFileReader.ReadImageInformation`` gives the size before any pixel is read; the frame
    size, frame count and decoded bytes are checked against the gates.

    Raises:
        InputError: unreadable header, not a 2-D / 3-D scalar image, implausible size, bad pixel data.
    """
    gates.check_metaimage_data_file(path)  # before ITK opens it: pixels come from this input only
    try:
        import SimpleITK as sitk

        rd = sitk.ImageFileReader()
        rd.SetFileName(str(path))
        rd.ReadImageInformation()
        size = tuple(int(v) for v in rd.GetSize())
        comps = int(rd.GetNumberOfComponents())
    except Exception as e:  # noqa: BLE001 - ITK raises RuntimeError with file details: type only
        raise InputError(path, f"unreadable image stack header ({type(e).__name__})") from None
    if len(size) not in (2, 3):
        raise InputError(path, f"image stack has {len(size)} dimensions (expected 2 or 3)")
    if comps != 1:
        raise InputError(path, f"image stack has {comps} components per pixel (expected one grey value)")
    t, h, w = _stack_shape(size, time_axis)
    if t <= 0:
        raise InputError(path, "image stack has no frames")
    gates.check_image_size(w, h, path, overrides, frames=t)
    gates.check_decode_bytes(t * h * w * 8, path, overrides)  # up to float64 per pixel
    try:
        arr = sitk.GetArrayFromImage(rd.Execute())
    except Exception as e:  # noqa: BLE001
        raise InputError(path, f"image stack pixel data cannot be read ({type(e).__name__})") from None
    if arr.ndim not in (2, 3) or arr.dtype.kind not in "uifb":
        raise InputError(path, f"image stack has an unsupported pixel layout ({arr.dtype.name}, {arr.ndim}-D)")
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    gates.require_finite(arr, path, "pixel values")  # a few NaN pixels blanked every frame's scaling
    return mha_time_first(arr, time_axis)


def image_size(path: Path, overrides: Mapping[str, Any] | None = None) -> tuple[int, int]:
    """(width, height) of a PNG / JPEG / TIFF frame or mask from its header, checked before decoding."""
    return gates.checked_image_size(path, overrides)


def _imread(path: Path, flags: int, overrides: Mapping[str, Any] | None = None) -> np.ndarray:
    """cv2.imread after the header check; None / OpenCV errors -> InputError."""
    import cv2

    image_size(path, overrides)
    try:
        im = cv2.imread(str(path), flags)
    except cv2.error:
        im = None
    if im is None:
        raise InputError(path, "unreadable image (pixel data cannot be decoded)")
    return im


class VideoReader:
    """Lazy frame reader.

    Args:
        path: AVI/MP4 file, ``.mha`` cine, or a folder of frame images.
        time_axis: for ``.mha``: ``auto``, 0 or -1 (see :func:`mha_time_first`).
        overrides: gate limit overrides (the bundle's ``gates``).

    Attributes:
        n_frames: number of frames (from the container header; checked while reading).
        height, width: frame size.
        fps: frame rate when known (else 0).

    Raises:
        InputError: missing, unreadable, empty or truncated video.
    """

    def __init__(
        self, path: str | Path, time_axis: str | int = "auto", overrides: Mapping[str, Any] | None = None
    ) -> None:
        self.path = Path(path)
        self.time_axis = time_axis
        self.overrides = dict(overrides or {})
        self.fps = 0.0
        self._stack: np.ndarray | None = None
        self._files: list[Path] = []
        if not self.path.exists():
            raise InputError(self.path, "video not found")
        if self.path.is_dir():
            self.kind = "folder"
            self._files = sorted(
                (p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
                key=lambda p: (_frame_number(p), p.name),
            )
            if not self._files:
                raise InputError(self.path, "frame folder holds no PNG/JPEG/TIFF frames")
            gates.check_image_size(16, 16, self.path, overrides, frames=len(self._files))
            first = self._read_image(self._files[0])
            self.n_frames = len(self._files)
            self.height, self.width = first.shape
        elif self.path.suffix.lower() in (".mha", ".mhd", ".nii", ".gz"):
            self.kind = "mha"
            arr = read_stack(self.path, time_axis, overrides)
            lo, hi = np.percentile(arr[0], [0.5, 99.5]) if arr.dtype != np.uint8 else (None, None)
            self._stack = _to_uint8(arr, lo, hi)
            self.n_frames, self.height, self.width = self._stack.shape
        else:
            self.kind = "video"
            import cv2

            if is_dicom(self.path):  # OpenCV opens nothing of it: "video has no frames" misled
                raise InputError(
                    self.path,
                    "a DICOM file: this app reads videos (.avi, .mp4, ...), .mha / .nii stacks or "
                    "frame folders; export the cine to one of those",
                )
            cap = open_capture(self.path)
            try:
                if not cap.isOpened():
                    raise InputError(self.path, "not a readable video (OpenCV could not open it)")
                # the container's declared geometry, checked before any frame is decoded
                w = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
                h = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
                self.n_frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
                fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
                self.fps = fps if np.isfinite(fps) and 0 < fps < 10_000 else 0.0
                gates.check_image_size(w, h, self.path, overrides, frames=max(self.n_frames, 1))
                ok, fr = cap.read()
            except cv2.error:
                raise InputError(self.path, "video cannot be decoded (OpenCV error)") from None
            finally:
                cap.release()
            if not ok or fr is None:
                raise InputError(self.path, "video has no decodable frame (corrupt or truncated)")
            if fr.ndim != 3 or fr.shape[2] != 3:
                raise InputError(self.path, f"video frames have an unexpected layout {tuple(fr.shape)}")
            self.height, self.width = fr.shape[:2]
            gates.check_image_size(self.width, self.height, self.path, overrides, frames=max(self.n_frames, 1))
        if self.n_frames <= 0:
            raise InputError(self.path, "video has no frames")

    def _read_image(self, p: Path) -> np.ndarray:
        import cv2

        im = _imread(p, cv2.IMREAD_UNCHANGED, self.overrides)
        if im.ndim == 3 and im.shape[2] >= 3:
            im = cv2.cvtColor(np.ascontiguousarray(im[..., :3]), cv2.COLOR_BGR2GRAY)
        elif im.ndim == 3:
            im = im[..., 0]
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
                    raise InputError(
                        p, f"frame size {fr.shape} differs from the first frame's {(self.height, self.width)}"
                    )
                yield fr
        else:
            import cv2

            cap = open_capture(self.path)
            try:
                if start:
                    cap.set(cv2.CAP_PROP_POS_FRAMES, start)
                for i in range(start, stop):
                    try:
                        ok, fr = cap.read()
                    except cv2.error:
                        ok, fr = False, None
                    if not ok or fr is None:
                        raise InputError(
                            self.path,
                            f"frame {i} of {self.n_frames} could not be decoded (video truncated or corrupt)",
                        )
                    if fr.shape[:2] != (self.height, self.width) or fr.ndim != 3:
                        raise InputError(
                            self.path,
                            f"frame {i} size {fr.shape[:2]} differs from the first frame's {(self.height, self.width)}",
                        )
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


def open_video(
    path: str | Path, time_axis: str | int = "auto", overrides: Mapping[str, Any] | None = None
) -> VideoReader:
    """Open a video for lazy reading (see :class:`VideoReader`); the entry point predict / score use."""
    return VideoReader(path, time_axis=time_axis, overrides=overrides)


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

            gates.check_image_size(16, 16, path, None, frames=len(files))
            for p in files:
                m = _imread(p, cv2.IMREAD_GRAYSCALE)
                out[_frame_number(p)] = (m > 0).astype(np.uint8)
        elif path.suffix.lower() in IMAGE_SUFFIXES:  # one mask image = the first frame's mask
            import cv2

            m = _imread(path, cv2.IMREAD_GRAYSCALE)
            out = {0: (m > 0).astype(np.uint8)}
        elif path.suffix.lower() in (".npy", ".npz"):
            arr, frames = _read_npy_masks(path)
            if arr.ndim == 2:
                arr = arr[None]
            if arr.ndim != 3:
                raise InputError(path, f"mask stack must be (T, H, W), got shape {arr.shape}")
            frames = frames if frames is not None else list(range(arr.shape[0]))
            if len(frames) != arr.shape[0]:
                raise InputError(path, "'frames' and 'masks' lengths differ")
            if any(int(f) < 0 for f in frames):
                raise InputError(path, "'frames' holds a negative frame index")
            out = {int(f): (arr[i] > 0).astype(np.uint8) for i, f in enumerate(frames)}
        elif path.suffix.lower() in (".mha", ".mhd", ".nii", ".gz"):
            arr = read_stack(path, time_axis)
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


def _check_npy_shape(shape: tuple[int, ...], path: Path) -> None:
    if len(shape) not in (2, 3):
        raise InputError(path, f"mask stack must be (T, H, W), got shape {tuple(shape)}")
    t, h, w = (1, *shape) if len(shape) == 2 else shape
    gates.check_image_size(w, h, path, None, frames=max(int(t), 1))


def _read_npy_masks(path: Path) -> tuple[np.ndarray, list[int] | None]:
    """Masks (and optional ``frames``) from ``.npy`` / ``.npz``; the array header's shape is checked first."""
    import zipfile

    from numpy.lib import format as npf

    def _header(f: Any) -> tuple[int, ...]:
        major, _minor = npf.read_magic(f)
        read = npf.read_array_header_1_0 if major == 1 else npf.read_array_header_2_0
        shape, _, _ = read(f)  # header only, no data
        return tuple(int(v) for v in shape)

    if path.suffix.lower() == ".npy":
        with open(path, "rb") as f:
            _check_npy_shape(_header(f), path)
        return np.asarray(np.load(path, allow_pickle=False)), None
    with zipfile.ZipFile(path) as z:
        names = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
        if not names:
            raise InputError(path, "no arrays in the .npz")
        key = "masks" if "masks" in names else names[0]
        with z.open(key + ".npy") as f:
            _check_npy_shape(_header(f), path)
        if "frames" in names:
            with z.open("frames.npy") as f:
                fs = _header(f)
            if len(fs) != 1 or fs[0] > int(gates.limit("video_max_frames")):
                raise InputError(path, f"'frames' must be a 1-D list of frame indices, got shape {fs}")
    with np.load(path, allow_pickle=False) as data:
        arr = np.asarray(data[key])
        frames = np.asarray(data["frames"]).astype(np.int64).tolist() if "frames" in data.files else None
    return arr, frames


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


def overlay_gif(
    path: str | Path,
    frames: Iterator[np.ndarray] | np.ndarray,
    masks: np.ndarray,
    fps: float = 10.0,
    max_side: int = 256,
) -> Path:
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
