"""The torch-free predictor interface each app implements for ``predict`` and ``score``.

A predictor is built from a verified :class:`Bundle` and answers one input file at a time with
a JSON-serialisable dict.  Bad input raises :class:`InputError` (one line naming the file); the
caller turns that into an error line or an error row.  Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from medtransfer.shared.runtime.bundle import Bundle
from medtransfer.shared.utils.errors import BundleError, ConfigError

_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


@dataclass(frozen=True)
class Opt:
    """One predictor option (``--opt key=value``): its kind and bounds, checked before any input.

    Kinds: ``flag`` (true / false), ``int`` and ``number`` (finite, within ``lo`` .. ``hi``),
    ``choice`` (one of ``choices``), ``box`` (``x0,y0,x1,y1``), ``text``.
    """

    kind: str
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()

    def check(self, key: str, value: Any) -> None:
        """Raise :class:`ConfigError` (one line naming ``--opt key``) when ``value`` does not fit."""
        if not self.fits(value):
            raise ConfigError(f"--opt {key}={str(value)[:40]}: expected {self._want()}")

    def fits(self, value: Any) -> bool:
        """Whether ``value`` (as the CLI or Python gives it) is of this kind and within its bounds."""
        if self.kind == "flag":
            return isinstance(value, bool) or str(value).lower() in _TRUE + _FALSE
        if self.kind in ("int", "number"):
            x = _number(value, self.kind == "int")
            return x is not None and (self.lo is None or x >= self.lo) and (self.hi is None or x <= self.hi)
        if self.kind == "choice":
            return str(value) in self.choices
        if self.kind == "box":
            parts = _box_parts(value)
            return (
                isinstance(parts, (list, tuple))
                and len(parts) == 4
                and all(_number(v, False) is not None for v in parts)
            )
        return isinstance(value, (str, int, float)) and bool(str(value).strip())

    def convert(self, value: Any) -> Any:
        """``value`` (already :meth:`fits`) as the predictor uses it: a bool, an int, a float, or text
        as the user wrote it (a box stays as given: ``x0,y0,x1,y1`` or four numbers)."""
        if self.kind == "flag":
            return value if isinstance(value, bool) else str(value).lower() in _TRUE
        if self.kind in ("int", "number"):
            x = _number(value, self.kind == "int")
            return int(x) if self.kind == "int" and x is not None else x
        if self.kind == "box":
            return ",".join(str(p).strip() for p in _box_parts(value))  # "x0,y0,x1,y1"
        return str(value)

    def _want(self) -> str:
        if self.kind == "flag":
            return "true or false"
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        if self.kind == "box":
            return "a box x0,y0,x1,y1 (four numbers)"
        if self.kind == "text":
            return "a non-empty value"
        what = "a whole number" if self.kind == "int" else "a finite number"
        if self.lo is not None and self.hi is not None:
            return f"{what} from {self.lo:g} to {self.hi:g}"
        if self.lo is not None:
            return f"{what} >= {self.lo:g}"
        return what


def _box_parts(value: Any) -> Any:
    """A box as its parts: ``"1,2,3,4"``, ``"[1, 2, 3, 4]"`` or a sequence."""
    return value.strip().strip("[]()").split(",") if isinstance(value, str) else value


def _number(v: Any, integer: bool) -> float | None:
    if isinstance(v, bool):
        return None
    try:
        x = float(v) if not isinstance(v, str) else float(v.strip())  # "8.0" is 8 (convert() gives an int)
    except (TypeError, ValueError, OverflowError):
        return None
    if not math.isfinite(x) or (integer and x != int(x)):
        return None
    return x


#: options every predictor takes (``predict`` / ``score`` / ``audit`` set them)
COMMON_OPTIONS: dict[str, Opt] = {"out_dir": Opt("text"), "input_root": Opt("text"), "plot": Opt("flag")}


def check_options(cls: type["Predictor"], options: Mapping[str, Any]) -> dict[str, Any]:
    """Refuse an option ``cls`` does not take, or a value out of its kind or range (None = not given);
    return the options converted to their kinds (:meth:`Opt.convert`: ``"16"`` -> 16, ``"off"`` ->
    False, text as written).

    Args:
        cls: the predictor class (its :attr:`Predictor.options_spec` and :data:`COMMON_OPTIONS`).
        options: the options (text from the command line, or Python values).

    Returns:
        The converted options (None values kept as None).

    Raises:
        ConfigError: one line naming ``--opt KEY`` and what it expects (or the options there are).
    """
    spec = {**COMMON_OPTIONS, **cls.options_spec}
    out: dict[str, Any] = {}
    for key, value in options.items():
        if value is None:
            out[key] = None
            continue
        if key not in spec:
            given = sorted(k for k in spec if k not in COMMON_OPTIONS) or ["none but out_dir and plot"]
            raise ConfigError(
                f"--opt {key}: not an option of this bundle's predictor (its options: {', '.join(given)})"
            )
        spec[key].check(key, value)
        out[key] = spec[key].convert(value)
    return out


def check_preprocessing(cls: type["Predictor"], bundle: Any) -> None:
    """Refuse a bundle whose ``metadata.json`` preprocessing holds a value the predictor cannot use
    (an edited, resealed bundle: ``risk_threshold: "high"`` made every input an error row blamed on
    the input).

    Raises:
        BundleError: one line naming the bundle's metadata and the field.
    """
    pre = getattr(bundle, "meta", {}).get("preprocessing") if bundle is not None else None
    if not isinstance(pre, Mapping):
        return
    for key, opt in cls.preprocessing_spec.items():
        if pre.get(key) is not None and not opt.fits(pre[key]):
            raise BundleError(
                f"{bundle.path / 'metadata.json'}: preprocessing.{key}={str(pre[key])[:40]}: expected {opt._want()}"
            )


def check_bundle_options(bundle: Bundle, options: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`check_options` for the predictor of ``bundle``'s app, before any worker starts; returns
    the converted options."""
    from medtransfer.shared.plugins import get_app, load_object

    ref = get_app(bundle.app).predictor
    return check_options(load_object(ref), options) if ref else dict(options)


class Predictor:
    """Base class: subclasses implement :meth:`predict`.

    Args:
        bundle: the verified bundle.
        options: predictor options from the CLI (``--opt key=value``), e.g. output folders.
    """

    #: suffixes this predictor accepts when ``score --input-dir`` walks a folder
    suffixes: tuple[str, ...] = ()
    #: the ``--opt`` keys it takes beyond :data:`COMMON_OPTIONS` (an unknown key is refused)
    options_spec: ClassVar[dict[str, Opt]] = {}
    #: what it reads from the bundle's ``metadata.json`` preprocessing, checked when it is built
    preprocessing_spec: ClassVar[dict[str, Opt]] = {}
    #: ``shared.runtime.perturb`` modalities of the decoded input (what ``medtransfer audit`` perturbs)
    modalities: tuple[str, ...] = ()

    def __init__(self, bundle: Bundle, **options: Any) -> None:
        self.options = check_options(type(self), options)  # converted: "16" -> 16, "off" -> False
        check_preprocessing(type(self), bundle)
        self.bundle = bundle

    def predict(self, path: Path, **case: Any) -> dict[str, Any]:
        """Answer one input.

        Args:
            path: the input file (or folder, for frame folders / cases).
            case: extra manifest columns for this case (e.g. a prompt).

        Returns:
            A flat-ish JSON-serialisable dict (nested values are JSON-encoded in CSV rows).
        """
        raise NotImplementedError

    def answer(self, path: Path, **case: Any) -> dict[str, Any]:
        """:meth:`predict` plus what holds for every answer of the bundle (``predict`` and ``score``
        call this): a bundle marked unreliable (exported below its trivial baseline) flags each answer."""
        res = self.predict(path, **case)
        if self.bundle.unreliable:
            from medtransfer.shared.runtime.gates import mark_unreliable

            mark_unreliable(res, [f"bundle: {self.bundle.unreliable}"])
        return res

    def input_hook(self, modality: str) -> Callable[..., np.ndarray] | None:
        """The audit's perturbation for a decoded ``modality`` input (``fn(x, **meta) -> x``), or None.

        ``medtransfer audit`` (``shared.runtime.audit``) sets ``self.perturbation`` (modality -> fn or
        None); outside an audit, and at severity 0, this is None and the predictor runs unchanged.
        """
        factory = self.__dict__.get("perturbation")
        return None if factory is None else factory(modality)

    def perturbed(self, x: np.ndarray, modality: str, **meta: Any) -> np.ndarray:
        """``x`` as decoded, or the audit's perturbation of it (call right after decoding an input).

        Args:
            x: the decoded input (layout per ``shared.runtime.perturb``'s modality).
            modality: its ``shared.runtime.perturb`` modality.
            meta: ``sfreq`` (Hz) and the like.

        Returns:
            ``x`` itself outside an audit.
        """
        fn = self.input_hook(modality)
        return x if fn is None else fn(x, **meta)

    def output_dir(self, path: Path) -> Path | None:
        """Folder for this input's artefacts: ``out_dir/<path relative to input_root, no suffix>``.

        ``out_dir`` and ``input_root`` come from the options (``predict``/``score`` set them); with no
        ``out_dir`` there are no artefacts (nothing is written beside the inputs).  Not created here.
        """
        from medtransfer.shared.runtime.outputs import output_dir

        out = self.options.get("out_dir")
        if not out:
            return None
        return output_dir(out, path, self.options.get("input_root"))

    def artefact_dir(self, path: Path) -> Path | None:
        """:meth:`output_dir`, refusing a folder that another input of this predictor already used.

        Raises:
            InputError: two inputs would write the same artefacts (checked before any work).
        """
        from medtransfer.shared.utils.errors import InputError

        out_dir = self.output_dir(path)
        if out_dir is None:
            return None
        used: dict[Path, Path] = self.__dict__.setdefault("_artefact_owners", {})
        prev = used.get(out_dir.resolve())
        if prev is not None and prev != path.resolve():
            raise InputError(
                path,
                f"its artefacts would overwrite those of {prev.name} in {out_dir}; "
                "give the inputs' common folder as input root or run them separately",
            )
        used[out_dir.resolve()] = path.resolve()
        return out_dir

    def list_inputs(self, folder: Path) -> list[Path]:
        """Inputs found in a folder for ``score --input-dir`` (sorted, recursive)."""
        sfx = tuple(s.lower() for s in self.suffixes)
        return sorted(p for p in folder.rglob("*") if p.is_file() and (not sfx or p.suffix.lower() in sfx))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax (numpy)."""
    z = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=axis, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function (numpy)."""
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))


def build_predictor(bundle: Bundle, **options: Any) -> Predictor:
    """The app's predictor for this bundle (found through the app's plugin spec)."""
    from medtransfer.shared.plugins import get_app, load_object
    from medtransfer.shared.utils.errors import BundleError

    spec = get_app(bundle.app)
    if not spec.predictor:
        raise BundleError(f"{bundle.path}: app '{bundle.app}' has no predictor")
    cls = load_object(spec.predictor)
    return cls(bundle, **options)
