"""Slides to feature bags: tile, encode in batches while the next tiles are read, write h5.

One h5 per slide, CLAM/TRIDENT layout::

    coords    (N, 2) int64   level-0 (x, y) of each tile's top-left corner
    features  (N, D) float32 encoder features
    attrs (file and both datasets): patch_level, patch_size, patch_size_level0, mpp,
        level0_mpp, target_magnification, level0_magnification, encoder, feature_dim, complete

A slide whose h5 exists with ``complete=True`` and the same encoder / tiling is skipped, so a
second run recomputes nothing; partial files from an interrupted run are redone.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from medtransfer.apps.wsi.slide import (
    find_slides,
    grid_note,
    iter_tile_batches,
    open_slide,
    plan_tiles,
    save_overlay,
    slide_name,
)
from medtransfer.shared.runtime.cache import file_sha256  # per file identity: big weights hashed once
from medtransfer.shared.utils.errors import ConfigError, InputError, MedTransferError
from medtransfer.shared.utils.locks import exclusive


@dataclass
class ExtractResult:
    """Outcome for one slide (an error row when ``status == "error"``)."""

    slide: str
    status: str  # done | skipped | error
    h5: str = ""
    n_tiles: int = 0
    feature_dim: int = 0
    seconds: float = 0.0
    error: str = ""
    overlay: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """A flat dict for CSV / JSON."""
        d = {k: v for k, v in self.__dict__.items() if k != "extra"}
        d.update(self.extra)
        return d


#: encoder precisions: ``auto`` = bf16 autocast on CUDA (fp32 when the GPU lacks bf16), fp32 on CPU
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is usable, else ``cpu``; ``cuda`` without a GPU is refused.

    Raises:
        ConfigError: unknown device, or ``cuda`` asked for but unavailable.
    """
    if device not in DEVICES:
        raise ConfigError(f"--device must be one of {', '.join(DEVICES)} (got '{device}'; no device indices)")
    if device == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise ConfigError("--device cuda: no CUDA GPU is available here (use --device auto or cpu)")
    return "cpu"


class Encoder:
    """A patch encoder from the shared registry (PyTorch), run in batches on uint8 tiles.

    CPU: fp32, channels-last, inference mode (the tiles' NHWC memory is already channels-last, so
    nothing is copied before the first convolution).  CUDA: tiles go through pinned memory
    (non-blocking copy), channels-last, autocast in bf16 (``precision=auto``) or fp16; cuDNN picks
    its fastest kernels for the fixed tile size.

    Args:
        name: registry name (``resnet18`` default; ``uni2h`` for the 1536-d UNI2-h ViT).
        weights: local weight file, True (registry file in the weights dirs), or None (random init).
        device: ``cpu``, ``cuda`` or ``auto``.
        patch_size: input side the encoder sees.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16`` (autocast; CUDA only, CPU stays fp32).
        threads: torch intra-op threads (0 = leave torch's setting).
    """

    backend = "torch"

    def __init__(
        self,
        name: str = "resnet18",
        weights: Any = None,
        device: str = "auto",
        patch_size: int = 224,
        precision: str = "auto",
        threads: int = 0,
    ) -> None:
        import torch

        from medtransfer.apps.wsi.model import build_tile_encoder

        if precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)} (got '{precision}')")
        if threads:
            torch.set_num_threads(int(threads))
        self.name = name
        self.bag_attrs: dict[str, Any] = {}  # what every bag records of it (EncoderSpec.build sets it)
        # the same module (normalisation inside) that export writes to encoder.onnx
        self.model, self.feature_dim, self.pretrained = build_tile_encoder(name, weights)
        self.device = torch.device(resolve_device(device))
        self.amp_dtype: Any = None
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            if precision in ("auto", "bf16"):
                self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else None
                if self.amp_dtype is None and precision == "bf16":
                    raise ConfigError("--precision bf16: this GPU has no bf16 support (use fp16 or fp32)")
            elif precision == "fp16":
                self.amp_dtype = torch.float16
        self.precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]
        self.model = self.model.eval().to(self.device).to(memory_format=torch.channels_last)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.patch_size = patch_size

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 -> (B, D) float32 features."""
        import torch

        with torch.inference_mode():
            tiles = tiles if tiles.flags.writeable else tiles.copy()
            x = torch.from_numpy(tiles)
            if self.device.type == "cuda":
                x = x.pin_memory().to(self.device, non_blocking=True)
            # NHWC memory viewed as NCHW is channels-last already: .float() keeps those strides
            x = x.permute(0, 3, 1, 2).float().contiguous(memory_format=torch.channels_last)
            if self.amp_dtype is None:
                y = self.model(x)
            else:
                with torch.autocast(self.device.type, dtype=self.amp_dtype):
                    y = self.model(x)
            return y.float().cpu().numpy()


class OnnxEncoder:
    """An exported patch encoder run by ONNX Runtime: a bundle's ``encoder.onnx`` (checksums verified)
    or any ``.onnx`` file with the bundle's contract (``tiles``: float32 NCHW RGB 0-255, normalisation
    inside; ``features`` out).  An int8-quantized file runs the same way.

    Args:
        path: a bundle folder holding ``encoder.onnx``, or an ``.onnx`` file.
        device: ``auto`` / ``cuda`` use ONNX Runtime's CUDA provider when it is installed.
        patch_size: the tile side the caller will feed (checked against the model's input).
        threads: ONNX Runtime intra-op threads (0 = ORT default).
        name: the encoder name recorded in the bags (default: the bundle's encoder / ``onnx:<file stem>``).
        pretrained: recorded in the bags for a plain ``.onnx`` file.
        bag_attrs: more attributes every bag records and a finished bag must match (the int8
            encoder's identity and its agreement with fp32, see :func:`int8_encoder`).

    Raises:
        ConfigError: missing file, no encoder in the bundle, or a tile size the model cannot take.
    """

    backend = "onnx"

    def __init__(
        self,
        path: str | Path,
        device: str = "auto",
        patch_size: int = 224,
        threads: int = 0,
        name: Optional[str] = None,
        pretrained: bool = False,
        bag_attrs: Optional[dict[str, Any]] = None,
    ) -> None:
        import onnxruntime as ort

        path = Path(path)
        self.pretrained = pretrained
        self.bag_attrs = dict(bag_attrs or {})
        self.device = "cpu"
        self.precision = "int8" if "int8" in path.name else "fp32"
        providers = ["CPUExecutionProvider"]
        if device != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
            self.device = "cuda"
        elif device == "cuda":
            raise ConfigError("--device cuda with --encoder-onnx: onnxruntime has no CUDA provider here")
        if path.is_dir():
            from medtransfer.shared.runtime.bundle import load_bundle

            if not (path / "encoder.onnx").is_file():
                raise ConfigError(
                    f"{path}: no encoder.onnx here (give a bundle with a patch encoder, or an .onnx file)"
                )

            bundle = load_bundle(path, threads=threads)  # sha256-checked
            if "encoder.onnx" not in (bundle.meta.get("files") or {}):
                raise ConfigError(f"{path}: this bundle has no encoder.onnx (export a run with a patch encoder)")
            pre = bundle.preprocessing
            self.name = str(pre.get("encoder") or "onnx")
            self.pretrained = bool(pre.get("encoder_pretrained", False))
            self.session = bundle.session("encoder.onnx")
            model_file = path / "encoder.onnx"
        elif path.is_file() and path.suffix == ".onnx":
            so = ort.SessionOptions()
            so.log_severity_level = 3
            if threads:
                so.intra_op_num_threads = int(threads)
                so.inter_op_num_threads = 1
            self.session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
            self.name = name or f"onnx:{path.stem}"
            model_file = path
        else:
            raise ConfigError(f"{path}: --encoder-onnx needs a bundle folder or an .onnx file")
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = list(inp.shape)
        if len(shape) != 4 or any(isinstance(d, int) and d != patch_size for d in shape[2:]):
            raise ConfigError(
                f"{model_file}: the encoder takes input {shape}, not (batch, 3, {patch_size}, {patch_size});"
                " set --patch-size to the size it was exported with"
            )
        self.patch_size = patch_size
        out = self.session.get_outputs()[0].shape
        d = out[-1] if out and isinstance(out[-1], int) else None
        self.feature_dim = int(d) if d else int(self(np.zeros((1, patch_size, patch_size, 3), np.uint8)).shape[1])

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 -> (B, D) float32 features."""
        x = np.ascontiguousarray(tiles.transpose(0, 3, 1, 2), dtype=np.float32)
        return np.asarray(self.session.run(None, {self.input_name: x})[0], dtype=np.float32)


BACKENDS = ("auto", "torch", "onnx")


def bag_identity(bag_attrs: dict[str, Any]) -> dict[str, Any]:
    """The attributes of ``bag_attrs`` that a finished bag must match to be skipped (``*_sha256``)."""
    return {k: v for k, v in bag_attrs.items() if k.endswith("_sha256")}


#: bag attributes that say which features a bag holds: bags that differ in one of them do not mix
#: (``weights_sha256``: the ``--weights`` file; ``encoder_onnx_sha256``: the ``--encoder-onnx`` file;
#: ``random_init_sha256``: a random-init encoder's weights, drawn with a fixed seed)
EXTRACTION_KEYS = (
    "encoder",
    "mpp",
    "patch_size",
    "weights_sha256",
    "encoder_onnx_sha256",
    "random_init_sha256",
    "int8_sha256",
)
#: what a model's input features depend on: a bag it scores must match its training bags in these
#: (the encoder compared without ``+int8``: an int8 extraction passed its cosine check against fp32)
SCORING_KEYS = ("encoder", "mpp", "patch_size", "weights_sha256", "encoder_onnx_sha256", "random_init_sha256")
#: recorded beside them, never compared: where the weights were (export looks for them there)
RECORDED_KEYS = ("weights_path",)


def base_encoder(name: Any) -> str:
    """The fp32 encoder an int8 extraction comes from (``resnet18+int8`` -> ``resnet18``)."""
    return str(name).removesuffix("+int8")


def _same_value(a: Any, b: Any) -> bool:
    """Equal as numbers when both are (0.5 in JSON vs an h5 float64 attribute), else as text."""
    import numbers

    if isinstance(a, numbers.Real) and isinstance(b, numbers.Real):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
    return str(a) == str(b)


def extraction_record(attrs: dict[str, Any]) -> dict[str, Any]:
    """The :data:`EXTRACTION_KEYS` (and :data:`RECORDED_KEYS`) a bag records, as JSON values (what a
    run and its bundle keep), from :func:`read_bag`'s attributes (numpy scalars already Python)."""
    out: dict[str, Any] = {}
    for k in EXTRACTION_KEYS + RECORDED_KEYS:
        if k in attrs:
            v = attrs[k]
            out[k] = v.decode("utf-8", "replace") if isinstance(v, bytes) else v
            if not isinstance(out[k], (str, int, float, bool)):
                out[k] = str(out[k])
    return out


def extraction_mismatch(
    a: dict[str, Any], b: dict[str, Any], keys: tuple[str, ...] = EXTRACTION_KEYS, int8_alike: bool = False
) -> Optional[str]:
    """How two bags' extractions differ (``None`` when they may be mixed).

    Only ``keys`` both record are compared (bags of other tools may record none).

    Args:
        a, b: bag attributes (or a run's :func:`extraction_record`).
        keys: what to compare (:data:`EXTRACTION_KEYS` to mix bags, :data:`SCORING_KEYS` to score one).
        int8_alike: compare encoders by :func:`base_encoder`.

    Returns:
        e.g. ``"encoder 'resnet18+int8' vs 'resnet18'"``, or ``None``.
    """
    for k in keys:
        if k in a and k in b:
            va, vb = a[k], b[k]
            va, vb = (x.decode("utf-8", "replace") if isinstance(x, bytes) else x for x in (va, vb))  # h5 byte strings
            if k == "encoder" and int8_alike:
                va, vb = base_encoder(va), base_encoder(vb)
            if not _same_value(va, vb):
                va, vb = (shown_value(x, 16 if k.endswith("_sha256") else 64) for x in (va, vb))
                return f"{k} '{va}' vs '{vb}'"
    return None


def shown_value(v: Any, n: int) -> str:
    """A bag attribute as a message may quote it: numbers and name-like text only (an attribute is
    file content, which may hold anything), cut to ``n`` characters."""
    import re

    t = str(v)
    return t[:n] if re.fullmatch(r"[A-Za-z0-9_.:+\-/]{1,200}", t) else "(not a name)"


def export_encoder_onnx(name: str, weights: Any, patch_size: int, path: str | Path) -> Path:
    """Export a registry patch encoder (normalisation inside) to ONNX through the shared exporter.

    The exporter checks ONNX Runtime against PyTorch on random tiles (max abs difference <= 1e-4),
    so features from the file equal the torch encoder's within that.  Written atomically.

    Args:
        name: registry encoder.
        weights: its weights (file, True or None = random init).
        patch_size: tile side (fixed in the graph; the batch is dynamic).
        path: the ``.onnx`` file to write.

    Returns:
        ``path``.
    """
    import torch

    from medtransfer.apps.wsi.model import build_tile_encoder
    from medtransfer.shared.export import export_onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.part.onnx")
    enc, _, _ = build_tile_encoder(name, weights)
    g = torch.Generator().manual_seed(0)
    export_onnx(
        enc.eval(),
        (torch.rand(2, 3, patch_size, patch_size, generator=g) * 255,),
        tmp,
        ["tiles"],
        ["features"],
        dynamic={"tiles": {0: "batch"}},
        atol=1e-4,
    )
    tmp.replace(path)
    return path


def quantize_encoder_int8(src: str | Path, dst: str | Path, calibration_tiles: np.ndarray) -> Path:
    """Static int8 quantization (QDQ, per-channel weights) of an ONNX patch encoder, calibrated on
    real tiles, so ONNX Runtime runs int8 convolutions (VNNI on x86).  Features then differ from
    fp32 (the bags record ``<encoder>+int8``).

    Args:
        src: the fp32 encoder (``tiles`` NCHW float 0-255 -> ``features``).
        dst: the int8 file to write.
        calibration_tiles: (N, H, W, 3) uint8 tiles of the slides to extract (a few dozen).

    Returns:
        ``dst``.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, dst = Path(src), Path(dst)
    x = np.ascontiguousarray(calibration_tiles.transpose(0, 3, 1, 2), dtype=np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"tiles": x[i : i + 8]} for i in range(0, len(x), 8)])

        def get_next(self) -> Optional[dict[str, np.ndarray]]:
            return next(self.batches, None)

    pre = dst.with_name(f".{dst.stem}.pre.onnx")
    tmp = dst.with_name(f".{dst.stem}.{os.getpid()}.part.onnx")
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        base = pre
    except Exception:  # pre-processing is an optimisation only
        base = src
    quantize_static(
        str(base),
        str(tmp),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    pre.unlink(missing_ok=True)
    tmp.replace(dst)
    return dst


def calibration_tiles(
    slide_path: str | Path,
    target_mpp: float,
    patch_size: int,
    mpp: Optional[float],
    tissue_fraction_min: float,
    n: int = 64,
) -> np.ndarray:
    """Up to ``n`` tissue tiles spread over a slide (int8 calibration: half calibrate, half check)."""
    prep = prepare_slide(slide_path, target_mpp, patch_size, mpp, tissue_fraction_min)
    try:
        t = prep.tiling
        t.coords = t.coords[np.linspace(0, len(t.coords) - 1, min(n, len(t.coords))).astype(int)]
        return np.concatenate([b for _, b in iter_tile_batches(prep.slide, t, batch_size=n)])
    finally:
        prep.close()


#: int8 calibration draws its tiles from up to this many slides of a folder (in order), so that one
#: atypical first slide (a small biopsy, another stain) does not set every activation range alone
INT8_CALIBRATION_SLIDES = 8


def folder_calibration_tiles(
    slides: list[Path],
    target_mpp: float,
    patch_size: int,
    mpp: Optional[float],
    tissue_fraction_min: float,
    n: int = 64,
    max_slides: int = INT8_CALIBRATION_SLIDES,
) -> np.ndarray:
    """Up to ``n`` tissue tiles from the first ``max_slides`` slides that have tissue (an equal share
    of each, spread over it), done or not: a blank or unreadable slide is passed over (its own
    error row later, not the job's end).  Each slide's share is contiguous, so that the even / odd
    split of :func:`int8_encoder` calibrates and checks on every slide.

    Raises:
        InputError: no slide has a tissue tile (the first slide's error).
    """
    parts: list[np.ndarray] = []
    first: Optional[InputError] = None
    left = max(n, 2)
    for i, sp in enumerate(slides):
        if len(parts) >= max_slides or left <= 0:
            break
        per = -(-left // max(1, min(max_slides - len(parts), len(slides) - i)))  # the rest, shared
        per += per % 2  # even, so each slide's tiles split evenly
        try:
            t = calibration_tiles(sp, target_mpp, patch_size, mpp, tissue_fraction_min, per)
        except InputError as e:
            first = first or e
            continue
        parts.append(t)
        left -= len(t)
    if not parts:
        assert first is not None  # slides is never empty
        raise first
    return np.concatenate(parts)


#: an int8 encoder whose features agree with fp32 worse than this (cosine, on any held-out tile of
#: the calibration slides) is refused: its bags would no longer be the fp32 encoder's features
INT8_MIN_COSINE = 0.98


def feature_agreement(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """Per-tile cosine similarity and relative L2 error of ``got`` against ``ref`` features.

    Args:
        ref: (N, D) reference features (fp32 encoder).
        got: (N, D) features of the same tiles (e.g. the int8 encoder).

    Returns:
        ``cosine_mean``, ``cosine_min``, ``rel_l2_max`` (rounded to 6 digits).
    """
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    nr, ng = np.linalg.norm(ref, axis=1), np.linalg.norm(got, axis=1)
    cos = (ref * got).sum(1) / np.maximum(nr * ng, 1e-12)
    cos = np.where((nr == 0) & (ng == 0), 1.0, cos)  # two zero vectors agree
    rel = np.linalg.norm(got - ref, axis=1) / np.maximum(nr, 1e-12)
    return {
        "cosine_mean": round(float(cos.mean()), 6),
        "cosine_min": round(float(cos.min()), 6),
        "rel_l2_max": round(float(rel.max()), 6),
    }


def int8_encoder(
    src: Path, cache_dir: Path, calibrate: Callable[[], np.ndarray], patch_size: int
) -> tuple[Path, dict[str, Any]]:
    """The int8 encoder of ``src`` for one features folder: made once, then reused.

    Every bag of a folder must come from one int8 model (static quantization depends on its
    calibration tiles: a resumed or extended job that calibrated again would mix two encoders
    under one name).  The model is kept in ``cache_dir`` beside its card (JSON: sha256 of the int8
    file and of its fp32 source, tile counts, agreement) and reused while the file matches the
    card.  When made, half of the calibration tiles calibrate and the other half check: the int8
    features must agree with fp32 at cosine >= :data:`INT8_MIN_COSINE` on each of them.

    Args:
        src: the fp32 ONNX encoder.
        cache_dir: where the int8 model and its card live (the features folder's ``.cache``).
        calibrate: returns (N, H, W, 3) uint8 tiles of the slides to calibrate on (called only when
            the model is made).
        patch_size: tile side.

    Returns:
        ``(int8 file, bag attributes)``: ``int8_sha256`` (what a finished bag must match) and the
        agreement (``int8_cosine_mean`` / ``int8_cosine_min`` / ``int8_check_tiles``).

    Raises:
        ConfigError: the int8 features disagree with fp32 (one line, with the numbers).
    """
    src_sha = file_sha256(src)
    q = cache_dir / f"{src.stem}-{src_sha[:16]}.int8.onnx"
    card = q.with_name(q.name.removesuffix(".onnx") + ".json")
    if q.is_file() and card.is_file():
        try:
            info = json.loads(card.read_text(encoding="utf-8"))
            if info.get("source_sha256") == src_sha and info.get("int8_sha256") == file_sha256(q):
                return q, _int8_bag_attrs(info)
        except (OSError, ValueError, AttributeError, KeyError, TypeError):
            pass  # an unreadable or edited card: made again below
    tiles = calibrate()
    cal, check = (tiles[0::2], tiles[1::2]) if len(tiles) >= 4 else (tiles, tiles)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{q.stem}.{os.getpid()}.part.onnx"
    try:
        quantize_encoder_int8(src, tmp, cal)
        ref = OnnxEncoder(src, "cpu", patch_size)(check)
        got = OnnxEncoder(tmp, "cpu", patch_size)(check)
        agree = feature_agreement(ref, got)
        if not agree["cosine_min"] >= INT8_MIN_COSINE:
            raise ConfigError(
                f"--quantize int8: the int8 encoder's features agree with fp32 at cosine "
                f"{agree['cosine_min']:.4f} (mean {agree['cosine_mean']:.4f}) on {len(check)} held-out tiles "
                f"of the calibration slides, below {INT8_MIN_COSINE}: run without --quantize"
            )
        info = {
            "source_sha256": src_sha,
            "int8_sha256": file_sha256(tmp),
            "calibration_tiles": int(len(cal)),
            "check_tiles": int(len(check)),
            **agree,
        }
        part = card.with_name(f".{card.name}.{os.getpid()}.part")
        part.write_text(json.dumps(info, indent=2), encoding="utf-8")
        tmp.replace(q)
        part.replace(card)
    finally:
        tmp.unlink(missing_ok=True)
    return q, _int8_bag_attrs(info)


def _int8_bag_attrs(info: dict[str, Any]) -> dict[str, Any]:
    return {
        "int8_sha256": str(info["int8_sha256"]),
        "int8_cosine_mean": float(info["cosine_mean"]),
        "int8_cosine_min": float(info["cosine_min"]),
        "int8_check_tiles": int(info["check_tiles"]),
    }


@dataclass(frozen=True)
class EncoderSpec:
    """How to build a patch encoder (picklable: sent to each worker, which builds it once).

    Args:
        name: registry encoder.
        weights: its local weights.
        device: ``auto``, ``cpu`` or ``cuda``.
        patch_size: tile side.
        precision: torch autocast precision on CUDA.
        threads: intra-op threads (0 = library default; workers get ``cores // workers``).
        onnx: a bundle folder or ``.onnx`` file: run that with ONNX Runtime instead of torch.
        backend: ``torch``, ``onnx`` (the registry encoder exported once, run by ONNX Runtime) or
            ``auto`` (ONNX Runtime on CPU when the encoder has a weights file, else torch).
        quantize: ``int8``: run the ONNX encoder statically int8-quantized, calibrated on tiles of
            the folder's first slides once per folder (:func:`int8_encoder`; features then differ
            from fp32, and the bags record ``<encoder>+int8``, the model's sha256 and its agreement).
        label_override: the encoder name to record (set by :meth:`resolve`).
        pretrained: recorded for an exported registry encoder (set by :meth:`resolve`).
        bag_attrs: more attributes every bag records and a finished bag must match (the int8
            encoder's identity, set by :meth:`resolve`).
    """

    name: str = "resnet18"
    weights: Any = None
    device: str = "auto"
    patch_size: int = 224
    precision: str = "auto"
    threads: int = 0
    onnx: Optional[str] = None
    backend: str = "torch"
    quantize: Optional[str] = None
    label_override: Optional[str] = None
    pretrained: bool = False
    bag_attrs: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        """The encoder name recorded in (and matched against) the h5 bags, known without building."""
        if self.label_override:
            return self.label_override
        if not self.onnx:
            return self.name + ("+int8" if self.quantize else "")
        p = Path(self.onnx)
        if p.is_dir():
            try:
                meta = json.loads((p / "metadata.json").read_text(encoding="utf-8"))
                return str((meta.get("preprocessing") or {}).get("encoder") or "onnx")
            except (OSError, ValueError):
                return "onnx"
        return f"onnx:{p.stem}"

    def use_onnx(self) -> bool:
        """Whether the registry encoder runs through ONNX Runtime (``backend`` onnx, or auto on CPU
        with a weights file; random-init encoders are for plumbing and stay in torch)."""
        if self.onnx:
            return bool(self.quantize)
        if self.backend == "torch":
            return False
        if self.backend == "onnx" or self.quantize:
            return True
        w = self.weights
        return isinstance(w, (str, Path)) and Path(w).is_file() and resolve_device(self.device) == "cpu"

    def resolve(
        self, cache_dir: Path, scratch: Path, calibrate: Optional[Callable[[], np.ndarray]] = None
    ) -> "EncoderSpec":
        """A spec every worker can build without exporting: the registry encoder exported to ONNX once
        (cached in ``cache_dir`` by name, tile size and weights sha256; random init goes to
        ``scratch``), int8-quantized when asked.  Unchanged when torch runs.

        Raises:
            ConfigError: unknown backend / quantization.
        """
        if self.backend not in BACKENDS:
            raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)} (got '{self.backend}')")
        if self.quantize not in (None, "int8"):
            raise ConfigError(f"--quantize must be int8 (got '{self.quantize}')")
        if not self.use_onnx():
            return self
        src = Path(self.onnx) if self.onnx else None
        label = self.label
        if src is None:
            w = self.weights
            if isinstance(w, (str, Path)) and Path(w).is_file():
                sha = dict(self.bag_attrs).get("weights_sha256") or file_sha256(Path(w))  # hashed once per job
                src = cache_dir / f"{self.name}-{self.patch_size}px-{sha[:16]}.onnx"
            else:
                src = scratch / f"{self.name}-{self.patch_size}px-random.onnx"
            if not src.is_file():
                export_encoder_onnx(self.name, self.weights, self.patch_size, src)
        elif src.is_dir():
            src = src / "encoder.onnx"
        attrs: dict[str, Any] = {}
        if self.quantize == "int8":
            if calibrate is None:
                raise ConfigError("--quantize int8 needs calibration tiles")
            # one per features folder (a random-init encoder's, exported per job, stays in the scratch)
            keep = scratch if src.parent == scratch else cache_dir
            src, attrs = int8_encoder(src, keep, calibrate, self.patch_size)
            label = label if label.endswith("+int8") else label + "+int8"
        return replace(
            self,
            onnx=str(src),
            label_override=label,
            pretrained=bool(self.weights),
            bag_attrs=tuple({**dict(self.bag_attrs), **attrs}.items()),
        )

    def source_identity(self) -> dict[str, Any]:
        """What the bags record of the encoder's own file, before :meth:`resolve`: the ``--weights``
        file (``weights_sha256``, and ``weights_path``, where export looks for it) or the
        ``--encoder-onnx`` file (``encoder_onnx_sha256``) or, for random init, the digest of the
        weights drawn (``random_init_sha256``).  A finished bag of other weights is then redone, and
        training and scoring tell such bags apart."""
        if self.onnx:
            p = Path(self.onnx)
            p = p / "encoder.onnx" if p.is_dir() else p
            return {"encoder_onnx_sha256": file_sha256(p)} if p.is_file() else {}
        w = self.weights
        if isinstance(w, (str, Path)) and Path(w).is_file():
            return {"weights_sha256": file_sha256(Path(w)), "weights_path": str(Path(w).resolve())}
        if not w:
            return {"random_init_sha256": random_init_digest(self.name)}
        return {}

    def build(self) -> Any:
        """The encoder (torch :class:`Encoder` or :class:`OnnxEncoder`)."""
        if self.onnx:
            return OnnxEncoder(
                self.onnx,
                self.device,
                self.patch_size,
                self.threads,
                self.label_override,
                self.pretrained,
                dict(self.bag_attrs),
            )
        enc = Encoder(self.name, self.weights, self.device, self.patch_size, self.precision, self.threads)
        enc.bag_attrs = dict(self.bag_attrs)
        return enc


def check_tiling_options(
    target_mpp: float, patch_size: int, mpp: Optional[float] = None, tissue_fraction_min: float = 0.25
) -> None:
    """Refuse tiling options no slide can satisfy, before any slide is read (they were reported as
    each slide's read failure: ``--target-mpp nan`` as "corrupt or unsupported data").

    Raises:
        ConfigError: one line naming the option.
    """
    if not (math.isfinite(float(target_mpp)) and 0.01 <= float(target_mpp) <= 100.0):
        raise ConfigError(f"--target-mpp must be a finite µm per pixel from 0.01 to 100 (got {target_mpp})")
    if int(patch_size) != patch_size or not 16 <= int(patch_size) <= 4096:
        raise ConfigError(f"--patch-size must be a whole number of pixels from 16 to 4096 (got {patch_size})")
    if mpp is not None and not (math.isfinite(float(mpp)) and 0.01 <= float(mpp) <= 100.0):
        raise ConfigError(f"--mpp must be a finite µm per pixel from 0.01 to 100 (got {mpp})")
    if not (math.isfinite(float(tissue_fraction_min)) and 0.0 <= float(tissue_fraction_min) <= 1.0):
        raise ConfigError(f"--tissue must be from 0 to 1 (got {tissue_fraction_min})")


@functools.cache
def random_init_digest(name: str) -> str:
    """The digest (``shared.finetune.weights_digest``) of the random-init tile encoder ``name``:
    what its bags record, and what export checks its rebuilt encoder against."""
    from medtransfer.apps.wsi.model import build_tile_encoder
    from medtransfer.shared.finetune import weights_digest

    return weights_digest(build_tile_encoder(name, None)[0])


def h5_is_complete(
    h5_path: Path, encoder: str, target_mpp: float, patch_size: int, identity: Optional[dict[str, Any]] = None
) -> bool:
    """True when the h5 holds a finished extraction with these settings (and, with ``identity``,
    these attribute values: e.g. the int8 encoder's ``int8_sha256``)."""
    import h5py

    if not h5_path.is_file():
        return False
    try:
        with h5py.File(h5_path, "r") as f:
            a = f.attrs
            return (
                bool(a.get("complete", False))
                and str(a.get("encoder", "")) == encoder
                and all(str(a.get(k, "")) == str(v) for k, v in (identity or {}).items())
                and abs(float(a.get("mpp", -1)) - target_mpp) < 1e-6
                and int(a.get("patch_size", -1)) == patch_size
                and "features" in f
                and "coords" in f
                and f["features"].shape[0] == f["coords"].shape[0]
            )
    except Exception:  # a corrupt / foreign h5 is simply not a finished extraction: redo it
        return False


class ImplausibleBagError(InputError):
    """A feature bag whose values are implausible (NaN / inf / |x| above ``feature_max_abs``).

    Prediction turns it into an error row like any InputError; training refuses to start on it
    (one such bag would poison the model), naming the file.
    """


def read_bag(
    h5_path: str | Path, gates: Optional[dict[str, Any]] = None
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read ``features`` (N, D), ``coords`` (N, 2) and attributes from a feature-bag h5.  Torch-free.

    The bag passes the plausibility gate (``shared.runtime.gates.check_feature_bag``): non-empty,
    finite, ``|x| <= feature_max_abs``.  Messages never quote the file's content.

    Args:
        h5_path: the bag.
        gates: limit overrides (a bundle's ``gates`` metadata).

    Raises:
        InputError: missing file, not HDF5, no ``features``, bad shapes, or an empty bag.
        ImplausibleBagError: NaN / inf or out-of-range feature values.
    """
    import h5py

    from medtransfer.shared.runtime.gates import check_feature_bag

    h5_path = Path(h5_path)
    if not h5_path.is_file():
        raise InputError(h5_path, "feature bag not found")
    try:
        with h5py.File(h5_path, "r") as f:
            ds = f.get("features")
            if not isinstance(ds, h5py.Dataset):
                raise InputError(h5_path, "h5 has no 'features' dataset")
            if ds.dtype.kind not in "fiu":
                raise InputError(h5_path, f"'features' must be numeric (dtype kind '{ds.dtype.kind}')")
            if ds.ndim not in (2, 3) or (ds.ndim == 3 and ds.shape[0] != 1):
                raise InputError(h5_path, f"features must be a non-empty (N, D) array, got shape {tuple(ds.shape)}")
            _check_declared_size(ds, h5_path, "features")
            feats = np.asarray(ds[()], dtype=np.float32)
            c = f.get("coords")
            if isinstance(c, h5py.Dataset):
                if c.dtype.kind not in "fiu":
                    raise InputError(h5_path, f"'coords' must be numeric (dtype kind '{c.dtype.kind}')")
                _check_declared_size(c, h5_path, "coords")
                coords = np.asarray(c[()])
            else:
                coords = None
            attrs = {}
            for k in f.attrs.keys():
                try:
                    v = f.attrs[k]
                    attrs[k] = v.item() if hasattr(v, "item") and getattr(v, "size", 1) == 1 else v
                except Exception:  # an attribute h5py cannot decode is not needed to answer
                    continue
    except InputError:
        raise
    except Exception as e:  # h5py raises OSError, KeyError, ValueError, RuntimeError ... for corrupt files
        raise InputError(
            h5_path, f"not a readable HDF5 feature bag (corrupt or truncated file: {type(e).__name__})"
        ) from None
    if feats.ndim == 3 and feats.shape[0] == 1:  # some tools save (1, N, D)
        feats = feats[0]
    if feats.ndim != 2 or feats.shape[0] == 0 or feats.shape[1] == 0:
        raise InputError(h5_path, f"features must be a non-empty (N, D) array, got shape {feats.shape}")
    if coords is None:
        coords = np.zeros((len(feats), 2), np.int64)
    if coords.ndim == 3 and coords.shape[0] == 1:
        coords = coords[0]
    if coords.ndim != 2 or coords.shape[0] != feats.shape[0] or coords.shape[1] < 2:
        raise InputError(h5_path, f"coords must be ({feats.shape[0]}, 2) like the features, got shape {coords.shape}")
    if not np.all(np.isfinite(coords)):
        raise InputError(h5_path, "coords contain NaN/inf")
    try:
        check_feature_bag(feats, h5_path, gates)
    except InputError as e:
        raise ImplausibleBagError(h5_path, e.problem) from None
    return feats, coords, attrs


#: largest bag read (elements): 1M patches x 2048-d; a header declaring more is refused before reading
MAX_BAG_ELEMENTS = 2**31


def _check_declared_size(ds: Any, path: Path, what: str) -> None:
    """Refuse a dataset whose declared size is impossible for this file (before allocating it)."""
    n = int(np.prod(ds.shape, dtype=np.float64)) if ds.shape else 1
    if n > MAX_BAG_ELEMENTS:
        raise InputError(path, f"'{what}' declares {n} values (limit {MAX_BAG_ELEMENTS}); refused before reading")
    if ds.compression is None and n * ds.dtype.itemsize > 2 * path.stat().st_size + (1 << 20):
        raise InputError(path, f"'{what}' declares more data than the file holds (truncated or corrupt)")


def find_bags(features_dir: str | Path) -> dict[str, Path]:
    """Feature bags under a folder (recursive, as ``wsi extract`` lays them out), keyed by slide name.

    Labels match bags by slide name (the file stem, e.g. TCGA ``slide_id`` minus ``.svs``), so two
    bags with one name in different sub-folders are ambiguous and refused.

    Args:
        features_dir: the folder given to ``wsi extract --out``.

    Returns:
        slide name -> h5 path (sorted by path).

    Raises:
        MedTransferError: two bags share a slide name.
    """
    out: dict[str, Path] = {}
    base = Path(features_dir)
    for p in sorted(base.rglob("*.h5")):
        if not p.is_file():
            continue
        if p.stem in out:
            raise MedTransferError(
                f"{out[p.stem]} and {p} are both bags of slide '{p.stem}'; labels match bags by "
                "slide name, so keep one or give each cohort its own features folder"
            )
        out[p.stem] = p
    return out


def write_bag(h5_path: Path, coords: np.ndarray, features: np.ndarray, attrs: dict[str, Any]) -> Path:
    """Write a feature bag h5 atomically (temp file then rename)."""
    import h5py

    h5_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = h5_path.with_suffix(".h5.part")
    with h5py.File(tmp, "w") as f:
        dc = f.create_dataset("coords", data=coords.astype(np.int64))
        df = f.create_dataset("features", data=features.astype(np.float32))
        for k, v in attrs.items():
            v = json.dumps(v) if isinstance(v, (dict, list)) else v
            f.attrs[k] = v
            dc.attrs[k] = v
            df.attrs[k] = v
    tmp.replace(h5_path)
    return h5_path


def _skipped(name: str, h5_path: Path) -> ExtractResult:
    import h5py

    with h5py.File(h5_path, "r") as f:
        n, d = f["features"].shape
    return ExtractResult(name, "skipped", str(h5_path), int(n), int(d))


@dataclass
class PreparedSlide:
    """An open slide with its tiling, thumbnail and tissue mask (made ahead of encoding)."""

    slide: Any
    tiling: Any
    thumb: np.ndarray
    mask: np.ndarray

    def close(self) -> None:
        """Close the slide handle."""
        try:
            self.slide.close()
        except Exception:  # closing a broken handle must not hide the real error
            pass


def prepare_slide(
    slide_path: str | Path,
    target_mpp: float = 0.5,
    patch_size: int = 224,
    mpp: Optional[float] = None,
    tissue_fraction_min: float = 0.25,
) -> PreparedSlide:
    """Open a slide and plan its tiles on the thumbnail tissue mask (nothing at full resolution is read).

    Raises:
        InputError: unreadable slide, no MPP, no tissue (one line naming the file).
    """
    slide = open_slide(slide_path)
    try:
        tiling, thumb, mask = plan_tiles(slide, slide_path, target_mpp, patch_size, mpp, tissue_fraction_min)
    except InputError:
        _close(slide)
        raise
    except Exception as e:  # the decoder's message may quote file content: the type only
        _close(slide)
        raise InputError(
            slide_path, f"reading the slide failed (corrupt or unsupported data: {type(e).__name__})"
        ) from None
    return PreparedSlide(slide, tiling, thumb, mask)


def _close(slide: Any) -> None:
    try:
        slide.close()
    except Exception:
        pass


def extract_slide(
    slide_path: str | Path,
    out_dir: str | Path,
    encoder: Any,
    target_mpp: float = 0.5,
    patch_size: int = 224,
    mpp: Optional[float] = None,
    batch_size: int = 32,
    tissue_fraction_min: float = 0.25,
    overwrite: bool = False,
    progress: Optional[Callable[[int], None]] = None,
    key: Optional[str] = None,
    read_workers: int = 2,
    prepared: Optional[PreparedSlide] = None,
) -> ExtractResult:
    """Tile one slide, encode its tiles and write ``out_dir/<key>.h5`` plus a thumbnail PNG.

    Tiles are read and decoded by ``read_workers`` threads ahead of the encoder (bounded queue,
    see :func:`~medtransfer.apps.wsi.slide.iter_tile_batches`) at the pyramid level matching
    ``target_mpp``, only where the thumbnail shows tissue, and encoded ``batch_size`` at a time.

    Args:
        slide_path: the slide.
        out_dir: output folder (h5 files; thumbnails under ``thumbnails/``).
        encoder: the patch encoder (:class:`Encoder`, :class:`OnnxEncoder`, or any callable
            ``(B, H, W, 3) uint8 -> (B, D)`` with ``name``, ``feature_dim``, ``pretrained``).
        target_mpp: tile resolution (um/px).
        patch_size: tile side at ``target_mpp``.
        mpp: level-0 MPP override for slides without metadata.
        batch_size: tiles per encoder batch.
        tissue_fraction_min: minimum tissue fraction per tile.
        overwrite: redo even when a complete h5 exists.
        progress: called with the number of tiles done after each batch.
        key: output key (the slide's path relative to the input root, without suffix, e.g.
            ``a/s1``; default: the slide's name).  Bags go to ``out_dir/<key>.h5``, thumbnails to
            ``out_dir/thumbnails/<key>.png``.
        read_workers: reader threads.
        prepared: the slide already opened and planned by :func:`prepare_slide` (same settings);
            it is closed here.

    Returns:
        An :class:`ExtractResult` (status done / skipped; errors raise InputError).
    """
    slide_path, out_dir = Path(slide_path), Path(out_dir)
    name = key or slide_name(slide_path)
    h5_path = out_dir / f"{name}.h5"
    extra = dict(getattr(encoder, "bag_attrs", None) or {})
    if not overwrite and h5_is_complete(h5_path, encoder.name, target_mpp, patch_size, bag_identity(extra)):
        if prepared is not None:
            prepared.close()
        return _skipped(name, h5_path)
    t0 = time.perf_counter()
    prep = prepared or prepare_slide(slide_path, target_mpp, patch_size, mpp, tissue_fraction_min)
    tiling = prep.tiling
    try:
        feats = np.zeros((len(tiling.coords), encoder.feature_dim), np.float32)
        done = 0
        for idx, tiles in iter_tile_batches(prep.slide, tiling, batch_size=batch_size, workers=read_workers):
            feats[idx] = encoder(tiles)
            done += len(idx)
            if progress:
                progress(done)
    except MedTransferError:
        raise
    except Exception as e:  # the decoder's message may quote file content: the type only
        raise InputError(
            slide_path, f"reading tiles failed (corrupt or unsupported tile data: {type(e).__name__})"
        ) from None
    finally:
        prep.close()
    from medtransfer.shared.runtime.gates import require_finite

    require_finite(feats, slide_path, "encoder features")
    attrs = {
        **tiling.attrs(),
        "encoder": encoder.name,
        "encoder_backend": str(getattr(encoder, "backend", "custom")),
        "precision": str(getattr(encoder, "precision", "fp32")),
        "feature_dim": int(encoder.feature_dim),
        "pretrained": bool(encoder.pretrained),
        "slide": slide_path.name,
        "key": name,
        "complete": True,
        "coords_convention": "level-0 top-left (x, y)",
        **extra,
    }
    write_bag(h5_path, tiling.coords, feats, attrs)
    overlay = save_overlay(prep.thumb, prep.mask, tiling, out_dir / "thumbnails" / f"{name}.png")
    return ExtractResult(
        name,
        "done",
        str(h5_path),
        len(tiling.coords),
        int(encoder.feature_dim),
        round(time.perf_counter() - t0, 3),
        overlay=str(overlay),
        extra={"grid": grid_note(tiling)},
    )


ENGINES = ("local", "ray")


@dataclass(frozen=True)
class _SlideJob:
    """What one worker needs besides its encoder to extract one slide (picklable)."""

    out_dir: str
    target_mpp: float
    patch_size: int
    mpp: Optional[float]
    batch_size: int
    tissue_fraction_min: float
    overwrite: bool
    read_workers: int


def _worker_encoder(spec: EncoderSpec) -> Any:
    """Per-worker state: the encoder, built once and reused for every slide the worker gets."""
    from medtransfer.shared.runtime.engines import worker_threads

    threads = spec.threads or worker_threads()  # inside an engine worker: cores // workers
    return replace(spec, threads=threads).build()


def _worker_extract(enc: Any, item: tuple[str, str], job: _SlideJob) -> ExtractResult:
    """Extract one slide in a worker; a known error becomes the slide's error row."""
    name, path = item
    try:
        return extract_slide(
            path,
            job.out_dir,
            enc,
            job.target_mpp,
            job.patch_size,
            job.mpp,
            job.batch_size,
            job.tissue_fraction_min,
            job.overwrite,
            key=name,
            read_workers=job.read_workers,
        )
    except MedTransferError as e:
        return ExtractResult(name, "error", error=str(e))


def _prepare_or_error(path: Path, job: _SlideJob) -> PreparedSlide | MedTransferError:
    try:
        return prepare_slide(path, job.target_mpp, job.patch_size, job.mpp, job.tissue_fraction_min)
    except MedTransferError as e:
        return e


def _extract_here(
    todo: list[tuple[str, Path]], spec: EncoderSpec, job: _SlideJob, show_progress: bool
) -> dict[str, ExtractResult]:
    """In this process: one encoder for all slides; the next slide is opened and its tissue planned
    in a background thread while the current one is encoded, so that fixed cost is hidden."""
    from concurrent.futures import Future, ThreadPoolExecutor

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    out: dict[str, ExtractResult] = {}
    if not todo:
        return out
    enc = spec.build()
    with (
        ThreadPoolExecutor(1, thread_name_prefix="wsi-plan") as planner,
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeRemainingColumn(),
            disable=not show_progress,
            transient=True,
        ) as bar,
    ):
        task = bar.add_task("slides", total=len(todo))
        nxt: Future[Any] = planner.submit(_prepare_or_error, todo[0][1], job)
        for i, (name, sp) in enumerate(todo):
            prep = nxt.result()
            if i + 1 < len(todo):
                nxt = planner.submit(_prepare_or_error, todo[i + 1][1], job)
            bar.update(task, description=f"{name[:40]}")
            if isinstance(prep, MedTransferError):
                out[name] = ExtractResult(name, "error", error=str(prep))
            else:
                try:
                    out[name] = extract_slide(
                        sp,
                        job.out_dir,
                        enc,
                        job.target_mpp,
                        job.patch_size,
                        job.mpp,
                        job.batch_size,
                        job.tissue_fraction_min,
                        True,  # completeness was checked before planning
                        key=name,
                        read_workers=job.read_workers,
                        prepared=prep,
                    )
                except MedTransferError as e:
                    out[name] = ExtractResult(name, "error", error=str(e))
            bar.advance(task)
    return out


def _run_jobs(
    todo: list[tuple[str, Path]],
    spec: EncoderSpec,
    job: _SlideJob,
    engine: str,
    workers: int,
    show_progress: bool,
    done: dict[str, ExtractResult],
) -> None:
    """Extract ``todo`` here (``local``, one worker) or through the shared ``run_map`` engine
    (local processes or Ray actors, each building its encoder once); results go into ``done``."""
    if engine == "local" and workers <= 1:
        done.update(_extract_here(todo, spec, job, show_progress))
        return
    if not todo:
        return
    from functools import partial

    from medtransfer.shared.runtime.engines import run_map

    items = [(name, str(sp)) for name, sp in todo]
    run = run_map(
        partial(_worker_encoder, spec),
        partial(_worker_extract, job=job),
        items,
        engine=engine,
        workers=max(1, int(workers)),
        chunksize=1,
        progress="slides" if show_progress else False,
    )
    with run:
        for i, r in run:
            name = items[i][0]
            done[name] = r if isinstance(r, ExtractResult) else ExtractResult(name, "error", error=str(r))


def extract_many(
    source: str | Path,
    out_dir: str | Path,
    encoder: str = "resnet18",
    weights: Any = None,
    target_mpp: float = 0.5,
    patch_size: int = 224,
    mpp: Optional[float] = None,
    batch_size: int = 32,
    tissue_fraction_min: float = 0.25,
    device: str = "auto",
    overwrite: bool = False,
    show_progress: bool = True,
    encoder_onnx: Optional[str | Path] = None,
    precision: str = "auto",
    threads: int = 0,
    read_workers: int = 2,
    engine: str = "local",
    workers: int = 1,
    backend: str = "torch",
    quantize: Optional[str] = None,
) -> list[ExtractResult]:
    """Extract feature bags for a slide or every slide in a folder; bad slides become error rows.

    Each slide's outputs are named by its path relative to ``source`` without the suffix
    (``a/s1.svs`` -> ``out_dir/a/s1.h5``, ``out_dir/thumbnails/a/s1.png``), so two slides never
    share a bag; two slides that would still map to one name (``s1.svs`` and ``s1.tif`` in one
    folder) are refused with one line before any work.  Writes ``out_dir/extract_log.csv`` (one
    row per slide: done / skipped / error).

    Scale-out: ``engine="local", workers=1`` runs here (one encoder for every slide, the next
    slide planned while the current one is encoded); ``workers > 1`` spreads slides over local
    processes, ``engine="ray"`` over Ray actors (local Ray, or the cluster in ``RAY_ADDRESS``),
    through the shared ``run_map`` engine: each worker builds its encoder once and reuses it, with
    ``cores // workers`` threads unless ``threads`` is given.

    Args:
        encoder_onnx: a bundle folder (its ``encoder.onnx``) or an ``.onnx`` file to run with ONNX
            Runtime instead of the torch ``encoder``.
        precision: torch autocast on CUDA (``auto`` = bf16), see :class:`Encoder`.
        threads: encoder intra-op threads (0 = library default / ``cores // workers``).
        read_workers: tile reader threads per slide.
        engine: ``local`` or ``ray``.
        workers: processes / actors.
        backend: ``torch`` (default here), ``onnx`` (the registry encoder exported once into
            ``out_dir/.cache``, run by ONNX Runtime) or ``auto`` (``wsi extract``'s default: onnx on
            CPU when the encoder has a weights file, torch otherwise); see :class:`EncoderSpec`.
        quantize: ``int8`` runs the ONNX encoder statically int8-quantized, calibrated on tiles of
            the folder's first slides (:func:`folder_calibration_tiles`: up to
            :data:`INT8_CALIBRATION_SLIDES`) once and kept in ``out_dir/.cache`` (:func:`int8_encoder`), so
            every bag of the folder comes from one int8 model (a bag of another one is redone);
            refused when its features agree with fp32 below cosine :data:`INT8_MIN_COSINE`.
            Features differ from fp32. A blank or unreadable slide is passed over for calibration
            (and is its own error row); the job fails only when no slide has tissue.

    Returns:
        One :class:`ExtractResult` per slide (``slide`` is its output key).

    Raises:
        InputError: no slides found.
        ConfigError: unknown engine, device or precision.
        MedTransferError: two slides map to one output name, or another job is extracting into
            ``out_dir`` (one job per folder: ``out_dir/.extract.lock``, released if it dies).
    """
    import csv
    import tempfile

    from medtransfer.shared.runtime.outputs import unique_keys

    if engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)} (got '{engine}')")
    if device not in DEVICES:
        raise ConfigError(f"--device must be one of {', '.join(DEVICES)} (got '{device}'; no device indices)")
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)} (got '{precision}')")
    check_tiling_options(target_mpp, patch_size, mpp, tissue_fraction_min)
    most = max(64, 4 * (os.cpu_count() or 1))  # --threads 5000 hung creating thread pools
    for name, v, lo, hi in (
        ("--batch-size", batch_size, 1, 4096),
        ("--threads", threads, 0, most),
        ("--read-workers", read_workers, 0, most),
    ):
        if int(v) != v or not lo <= v <= hi:
            raise ConfigError(f"{name} must be a whole number from {lo} to {hi} (got {v})")
    slides = find_slides(source)
    if not slides:
        raise InputError(source, "no slide files found")
    root = Path(source) if Path(source).is_dir() else Path(source).parent
    keyed = unique_keys(slides, root)  # refuses a clash before any work
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise MedTransferError(f"{out_dir}: --out is a file, expected a folder for the bags")
    out_dir.mkdir(parents=True, exist_ok=True)
    # one job per features folder: a second one wrote the same bags, int8 model and log at once
    # (a bag could record one int8 model and hold another's features)
    with exclusive(out_dir / ".extract.lock", out_dir, "already being extracted into by"):
        spec = EncoderSpec(
            encoder,
            weights,
            device,
            patch_size,
            precision,
            int(threads),
            str(encoder_onnx) if encoder_onnx else None,
            backend,
            quantize,
        )
        if backend not in BACKENDS:
            raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)} (got '{backend}')")
        spec = replace(spec, bag_attrs=tuple(spec.source_identity().items()))
        job = _SlideJob(
            str(out_dir), target_mpp, patch_size, mpp, batch_size, tissue_fraction_min, overwrite, int(read_workers)
        )
        # beside the bags, so that workers on other machines (Ray) read the same exported encoder
        (out_dir / ".cache").mkdir(exist_ok=True)
        scratch = tempfile.TemporaryDirectory(prefix="tmp-", dir=out_dir / ".cache")

        def calibrate() -> np.ndarray:
            return folder_calibration_tiles(list(keyed.values()), target_mpp, patch_size, mpp, tissue_fraction_min)

        def resolved(s: EncoderSpec) -> EncoderSpec:
            return s.resolve(out_dir / ".cache", Path(scratch.name), calibrate)

        try:
            if quantize:  # which int8 model the folder's bags must come from decides what is done
                spec = resolved(spec)
            done: dict[str, ExtractResult] = {}
            todo: list[tuple[str, Path]] = []
            identity = bag_identity(dict(spec.bag_attrs))
            for name, sp in keyed.items():
                if not overwrite and h5_is_complete(
                    out_dir / f"{name}.h5", spec.label, target_mpp, patch_size, identity
                ):
                    done[name] = _skipped(name, out_dir / f"{name}.h5")
                else:
                    todo.append((name, sp))
            if todo and not quantize:  # export once here (cached), so that no worker exports
                spec = resolved(spec)
            _run_jobs(todo, spec, job, engine, workers, show_progress, done)
        finally:
            scratch.cleanup()
        results = [done[name] for name in keyed]
        rows = [r.row() for r in results]
        log = out_dir / "extract_log.csv"
        mine = {str(r.get("slide")) for r in rows}
        try:  # the earlier jobs' rows of other slides stay (a job over one slide kept only its own)
            with open(log, newline="", encoding="utf-8") as f:
                rows = [r for r in csv.DictReader(f) if r.get("slide") not in mine] + rows
        except (OSError, UnicodeDecodeError, csv.Error):
            pass
        cols: list[str] = []
        for r in rows:
            cols += [k for k in r if k not in cols]
        tmp = log.with_name(f".{log.name}.{os.getpid()}.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=cols, restval="")
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, log)
        return results
