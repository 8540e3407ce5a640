"""Torch-free prediction: the streaming loop on ONNX Runtime, reading the video lazily.

``medtransfer predict BUNDLE VIDEO --box x0,y0,x1,y1 | --mask FIRST_FRAME_MASK --out DIR`` writes
``DIR/<input key>/masks.npz`` (``masks``: (T, H, W) uint8) and ``overlay.gif`` beside it (``--opt
gif=false`` skips the GIF).  The input key is the video's path relative to the input root without
its last suffix (``pt.v1.mha`` -> ``pt.v1``), so two inputs never share an output folder.  Without
``--out`` nothing is written (the answer says so).  Imports no torch.

The ONNX sessions (:func:`make_session`) keep their thread pools from spinning when idle (six
sessions alternating per frame, each spinning its own pool, cost 1.5-2x per graph), or share ONNX
Runtime's process-wide pool (``--opt shared_pool=true``, for processes that open no other ONNX
session), run on the best available provider (CUDA when ``onnxruntime-gpu`` is installed) and take
``--opt fast=false`` for the bundle's plain sessions (the previous path).  The image encoder is the
bundle's default one (``encoder_default`` in its metadata: the int8 graph when export found it
agreeing with float32, see ``export.int8_encoder_agreement``); ``--opt encoder=fp32`` or ``int8``
picks one.  With the int8 encoder goes the bundle's int8 memory attention where it has one (the
agreement check covers both graphs together).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medtransfer.apps.videoseg.data import prompt_mask
from medtransfer.apps.videoseg.io import VIDEO_SUFFIXES, open_video, overlay_gif, read_masks
from medtransfer.apps.videoseg.propagate import StreamingPropagator, check_box
from medtransfer.shared.runtime import gates
from medtransfer.shared.runtime.bundle import Bundle
from medtransfer.shared.runtime.predictor import Opt, Predictor
from medtransfer.shared.utils.errors import InputError

#: per-graph ONNX Runtime settings of the fast backend: graph optimisation level (the
#: image encoder is the one large graph worth full fusion; the small tracker graphs too)
GRAPH_OPT = {
    "image_encoder.onnx": "all",
    "decoder_box.onnx": "all",
    "decoder_track.onnx": "all",
    "mask_prompt.onnx": "all",
    "memory_encoder.onnx": "all",
    "memory_attention.onnx": "all",
}
_OPT_LEVELS = {"basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
_POOL: dict[str, Any] = {}
ENCODER_FILES = {"fp32": "image_encoder.onnx", "int8": "image_encoder_int8.onnx"}
#: the int8 memory attention (linear layers int8; attention itself float32) that newer bundles ship
#: beside the float32 one: it runs with the int8 image encoder (one int8/fp32 choice, one agreement check)
ATTENTION_FILES = {"fp32": "memory_attention.onnx", "int8": "memory_attention_int8.onnx"}


def encoder_file(bundle: Bundle, encoder: str = "auto") -> str:
    """The image-encoder graph to run.

    Args:
        bundle: the opened bundle.
        encoder: ``auto`` (the bundle's ``encoder_default`` on CPU, else float32: dynamic int8 has
            no GPU kernels), ``fp32`` or ``int8``.

    Returns:
        The graph's file name inside the bundle.

    Raises:
        InputError: an unknown choice, or ``int8`` for a bundle without an int8 encoder.
    """
    from medtransfer.shared.runtime.bundle import _providers

    choice = str(encoder or "auto").lower()
    if choice == "auto":
        on_cpu = _providers()[0] == "CPUExecutionProvider"
        choice = str(bundle.meta.get("encoder_default") or "fp32") if on_cpu else "fp32"
    if choice not in ENCODER_FILES:
        raise InputError("--opt encoder", f"'{encoder}' is not one of auto, fp32, int8")
    name = ENCODER_FILES[choice]
    if name not in bundle.description.files:
        raise InputError(bundle.path, f"this bundle has no {choice} image encoder ({name}); use --opt encoder=fp32")
    return name


def attention_file(bundle: Bundle, encoder: str) -> str:
    """The memory-attention graph that goes with the chosen image encoder file: int8 with the int8
    encoder when the bundle has it (bundles exported before 2026-11-28 have only float32)."""
    int8 = ATTENTION_FILES["int8"]
    if encoder == ENCODER_FILES["int8"] and int8 in bundle.description.files:
        return int8
    return ATTENTION_FILES["fp32"]


def resolve_prefetch(choice: bool | str | None) -> bool:
    """``--opt prefetch``: encode frame t+1 in a second thread while frame t is tracked.

    Off by default: on 2 cores (SAM2.1 hiera-tiny, 48 frames, threads split 1 + 1) it tied at 512 px
    with the int8 graphs (27.5 vs 27.6 s), lost at 256 px (6.85 vs 6.57 s) and lost with the float32
    encoder, which then outweighs the tracker graphs (11.1 vs 9.1 s at 256 px, 44.0 vs 40.1 s at 512).

    Raises:
        InputError: not true / false.
    """
    v = "false" if choice is None else str(choice).lower()
    if v in ("true", "1", "yes", "on"):
        return True
    if v in ("false", "0", "no", "off"):
        return False
    raise InputError("--opt prefetch", f"'{choice}' is not one of true, false")


def default_threads() -> int:
    """CPU threads for ONNX Runtime: ``MEDTRANSFER_THREADS`` or the cores this process may use."""
    env = int(os.environ.get("MEDTRANSFER_THREADS", "0") or 0)
    if env:
        return env
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # pragma: no cover - not Linux
        return max(os.cpu_count() or 1, 1)


def shared_thread_pool(threads: int) -> bool:
    """Create ONNX Runtime's process-wide (global) intra-op thread pool once.

    Sessions made with ``use_per_session_threads=False`` then share one pool instead of each
    spinning its own (six sessions alternating per frame fought over the cores).

    Returns:
        True when the global pool exists (made now or earlier in this process), else False
        (the caller falls back to per-session pools without spinning).
    """
    if "ok" in _POOL:
        return bool(_POOL["ok"])
    import onnxruntime.capi._pybind_state as C

    try:
        C.set_global_thread_pool_sizes(int(threads), 1)
        _POOL["ok"] = True
    except Exception as e:  # noqa: BLE001 - already created (by us or another library): use it
        _POOL["ok"] = "already been created" in str(e)
    _POOL["threads"] = threads
    return bool(_POOL["ok"])


def make_session(
    bundle: Bundle, name: str, threads: int = 0, shared_pool: bool = False, opt: str | None = None, spin: bool = False
) -> Any:
    """One ONNX Runtime session for a bundle file, with the fast backend's settings.

    Args:
        bundle: an opened (sha256-checked) bundle.
        name: the ``.onnx`` file inside it.
        threads: intra-op threads (0 = :func:`default_threads`).
        shared_pool: use the process-wide thread pool (:func:`shared_thread_pool`).  Off by default:
            once that pool exists, ONNX Runtime refuses every session in the process that has its
            own pool (``Bundle.session`` of any app), so only a process that runs nothing else may
            turn it on.  Off: per-session pools of ``threads`` that do not spin when idle.
        opt: graph optimisation level (``basic``/``extended``/``all``; default :data:`GRAPH_OPT`).
        spin: per-session pools spin during a run (no wake-up latency between ops) and stop spinning
            when the run ends (``session.force_spinning_stop``), so idle pools still leave the cores
            to the next session.  Off by default: on a loaded machine spinning threads steal cores.

    Returns:
        ``onnxruntime.InferenceSession`` on the best available provider (CUDA when installed).
    """
    import onnxruntime as ort

    from medtransfer.shared.runtime.bundle import _providers, share_cpu_arena
    from medtransfer.shared.runtime.cache import ort_session

    if name not in bundle.description.files:
        raise InputError(bundle.path / name, "not a model file of this bundle")
    threads = threads or default_threads()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[opt or GRAPH_OPT.get(name, "all")])
    if shared_pool and shared_thread_pool(threads):
        so.use_per_session_threads = False
    else:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        # idle pools must not spin while another session works
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        if spin:
            so.add_session_config_entry("session.force_spinning_stop", "1")
    # the graphs run in turn: one CPU arena for all of them holds about the largest one's peak, not the sum
    share_cpu_arena(so)
    # CPU sessions reuse this user's saved optimised graph of the same verified file (shared runtime cache)
    digest = next((c.sha256 for c in bundle.checks if c.name == name and c.status == "OK"), None)
    return ort_session(bundle.path / name, so, _providers(), digest=digest)


class OnnxBackend:
    """The bundle's ONNX graphs behind the numpy interface of the streaming loop.

    Args:
        bundle: the opened bundle.
        fast: sessions from :func:`make_session` (idle pools do not spin, explicit thread count,
            per-graph optimisation level); False = the bundle's plain sessions (the previous path,
            which the fast path is checked against).
        threads: intra-op threads for the fast sessions (0 = the bundle's ``threads``, else
            ``MEDTRANSFER_THREADS``, else all cores this process may use).  The shared pool is made
            once per process: the first backend's count holds for later ones.
        shared_pool: the fast sessions share ONNX Runtime's global thread pool (see
            :func:`make_session`: only for processes that open no other ONNX session).
        encoder: image encoder, ``auto`` / ``fp32`` / ``int8`` (:func:`encoder_file`).
        spin: fast sessions spin within a run only (see :func:`make_session`).
        prefetch: the streaming loop encodes frame t+1 in a second thread while it tracks frame t
            (:func:`resolve_prefetch`; off by default); fast sessions then split the threads
            between the encoder and the tracker graphs.
    """

    def __init__(
        self,
        bundle: Bundle,
        fast: bool = True,
        threads: int = 0,
        shared_pool: bool = False,
        encoder: str = "auto",
        spin: bool = False,
        prefetch: bool | str = False,
    ) -> None:
        self.bundle = bundle
        self.fast = fast
        self.encoder_file = encoder_file(bundle, encoder)
        threads = threads or int(getattr(bundle, "threads", 0) or 0) or default_threads()
        self.prefetch = resolve_prefetch(prefetch)
        # with prefetch the encoder and the tracker graphs run at once: the threads are split
        split = self.prefetch and fast and not shared_pool and threads >= 2
        enc_threads, trk_threads = ((threads + 1) // 2, threads // 2) if split else (threads, threads)
        self.threads = {"encoder": enc_threads, "tracker": trk_threads}
        with np.load(bundle.path / "constants.npz") as z:
            self.consts = {k: z[k] for k in z.files}

        def sess(name: str, n: int = trk_threads) -> Any:
            return make_session(bundle, name, n, shared_pool, spin=spin) if fast else bundle.session(name)

        self.enc = sess(self.encoder_file, enc_threads)
        self.attention_file = attention_file(bundle, self.encoder_file)
        # a video is prompted once, by a box or by a mask: each prompt decoder opens on first use
        # (a session costs tens of ms of every cold start); the tracking decoder runs every frame
        self.dec = _LazySessions(
            sess, {"box": "decoder_box.onnx", "track": "decoder_track.onnx", "mask": "mask_prompt.onnx"}
        )
        self.dec["track"]  # noqa: B018 - a bundle missing it fails here, not mid-video
        self.menc = sess("memory_encoder.onnx")
        self.matt = sess(self.attention_file)
        self._track_prompt = {"coords": np.zeros((1, 1, 2), np.float32), "labels": -np.ones((1, 1), np.int32)}

    def _run(self, sess: Any, feeds: dict[str, Any]) -> list[Any]:
        return sess.run(None, feeds)

    def encode_image(self, image: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(self._run(self.enc, {"image": image}))

    def decode(
        self, kind: str, pix: np.ndarray, hr0: np.ndarray, hr1: np.ndarray, *prompt: np.ndarray
    ) -> tuple[np.ndarray, ...]:
        feeds: dict[str, Any] = {"pix_feat": np.ascontiguousarray(pix, np.float32), "hr0": hr0, "hr1": hr1}
        if kind == "track":
            feeds.update(self._track_prompt)
        elif kind == "box":
            feeds.update(coords=prompt[0], labels=prompt[1])
        else:
            feeds["mask"] = prompt[0]
        return tuple(self._run(self.dec[kind], feeds))

    def encode_memory(
        self, feat: np.ndarray, mask_logits: np.ndarray, score: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        a, b = self._run(self.menc, {"vision_feat": feat, "mask_logits": mask_logits, "object_score": score})
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
        feeds = {"curr": curr, "curr_pos": curr_pos, "mem": mem, "mem_pos": mem_pos, "ptr": ptr, "ptr_pos": ptr_pos}
        if self.fast:
            feeds = {k: np.ascontiguousarray(v, np.float32) for k, v in feeds.items()}
        return self._run(self.matt, feeds)[0]


class _LazySessions(dict):
    """Sessions by kind, each opened on first access (thread-safe: the prefetch thread never
    decodes, but a predictor may be shared)."""

    def __init__(self, open_session: Callable[[str], Any], files: dict[str, str]) -> None:
        super().__init__()
        self._open, self._files, self._lock = open_session, files, threading.Lock()

    def __missing__(self, kind: str) -> Any:
        with self._lock:
            if kind not in self:
                self[kind] = self._open(self._files[kind])
            return dict.__getitem__(self, kind)


def _flag(v: Any) -> bool:
    return str(v).lower() not in ("false", "0", "no", "off")


def backend_options(options: dict[str, Any]) -> dict[str, Any]:
    """``--opt`` values for :class:`OnnxBackend`: ``fast`` (default on), ``threads``, ``shared_pool``,
    ``encoder`` (``auto``), ``spin`` (off), ``prefetch`` (off)."""
    return {
        "prefetch": resolve_prefetch(options.get("prefetch", False)),
        "fast": _flag(options.get("fast", True)),
        "threads": int(options.get("threads") or 0),
        "shared_pool": _flag(options.get("shared_pool", False)),
        "encoder": str(options.get("encoder") or "auto"),
        "spin": _flag(options.get("spin", False)),
    }


#: ``--opt time_axis``: where a 3-D ``.mha`` stack keeps its frames (``auto``: TrackRAD's time-last
#: layout when the first two axes are equal and the last differs, else time first)
_TIME_AXES: dict[str, str | int] = {"auto": "auto", "first": 0, "last": -1}


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

    A mask file's prompt is its first non-empty labelled frame (:func:`data.prompt_mask`, as in
    evaluation): tracking starts there, earlier frames stay empty, the answer gives ``prompt_frame``,
    and no other frame of the file is used (an EchoNet label .npz prompts on its first tracing).

    Options: ``out_dir`` (masks.npz and the GIF go to ``out_dir/<input key>/``; none: nothing is
    written), ``input_root`` (set by predict / score), ``gif`` (default on),
    ``box`` / ``mask`` (default prompt), ``time_axis`` (``auto`` / ``first`` / ``last``: where a 3-D
    ``.mha`` keeps its frames; ``auto`` guesses TrackRAD's time-last layout from square frames),
    ``max_frames`` (0 = all), ``prefetch`` (encode the next
    frame in a second thread while tracking this one, threads split; off by default,
    :func:`resolve_prefetch`), ``fast`` / ``threads`` / ``shared_pool`` / ``encoder`` (ONNX Runtime
    settings and the image encoder, :func:`backend_options`).
    """

    suffixes = VIDEO_SUFFIXES
    options_spec = {
        "gif": Opt("flag"),
        "box": Opt("box"),
        "mask": Opt("text"),
        "max_frames": Opt("int", 0, None),
        "prefetch": Opt("flag"),
        "fast": Opt("flag"),
        "threads": Opt("int", 0, max(64, 4 * (os.cpu_count() or 1))),
        "shared_pool": Opt("flag"),
        "encoder": Opt("choice", choices=("auto", "fp32", "int8")),
        "spin": Opt("flag"),
        "time_axis": Opt("choice", choices=("auto", "first", "last")),
    }
    accepts_folders = True  # frame folders are videos too (score's input check lets folders through)
    modalities = ("video",)
    #: score / estimate: a manifest's label (its masks file) comes as this case key; its first labelled
    #: frame is the prompt (``data.prompt_mask``) unless the case gives a mask or a box
    label_prompt = "label_mask"

    def __init__(self, bundle: Bundle, **options: Any) -> None:
        super().__init__(bundle, **options)
        self.prop = StreamingPropagator(OnnxBackend(bundle, **backend_options(self.options)))

    def predict(self, path: Path, **case: Any) -> dict[str, Any]:
        """Propagate; returns paths of the outputs and a per-frame area summary.

        Raises:
            InputError: bad video, no prompt, prompt outside the image, empty or mis-sized mask.
        """
        path = Path(path)
        axis = _TIME_AXES[str(self.options.get("time_axis") or "auto")]
        reader = open_video(path, time_axis=axis, overrides=self.bundle.meta.get("gates") or None)
        box = case.get("box") or self.options.get("box")
        mask_path = (
            case.get("mask") or (None if case.get("box") else case.get("label_mask")) or self.options.get("mask")
        )
        n = reader.n_frames
        mf = int(self.options.get("max_frames") or 0)
        if mf:
            n = min(n, mf)
        mask, p = None, 0  # p: the prompt frame, where tracking starts (earlier frames stay empty)
        if mask_path:
            p, first = prompt_mask(
                read_masks(mask_path, time_axis=axis), mask_path
            )  # only this frame of the file is used
            if p >= n:
                raise InputError(mask_path, f"prompt mask on frame {p} but the video has {n} frames to track")
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
        frames = reader.frames(p, n)
        hook = self.input_hook("video")
        if hook is not None:  # medtransfer audit: the decoded clip perturbed as a whole
            frames = iter(hook(np.stack(list(frames)), vmax=255.0))
        for t, m in self.prop.run(frames, n - p, box=None if mask is not None else box, mask=mask):
            out[p + t] = m
        area = out[p:].reshape(n - p, -1).sum(1)  # the tracked frames
        out_dir = self.output_dir(path)
        res: dict[str, Any] = {
            "input": str(path),
            "frames": int(n),
            "height": reader.height,
            "width": reader.width,
            "masks": None,
            "prompt_frame": p,
            "area_first": int(area[0]),
            "area_mean": float(area.mean()),
            "empty_frames": int((area == 0).sum()),
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
