"""The torch-free predictor interface each app implements for ``predict`` and ``score``.

A predictor is built from a verified :class:`Bundle` and answers one input file at a time with
a JSON-serialisable dict.  Bad input raises :class:`InputError` (one line naming the file); the
caller turns that into an error line or an error row.  Torch-free.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medtransfer.shared.runtime.bundle import Bundle


class Predictor:
    """Base class: subclasses implement :meth:`predict`.

    Args:
        bundle: the verified bundle.
        options: predictor options from the CLI (``--opt key=value``), e.g. output folders.
    """

    #: suffixes this predictor accepts when ``score --input-dir`` walks a folder
    suffixes: tuple[str, ...] = ()
    #: ``shared.runtime.perturb`` modalities of the decoded input (what ``medtransfer audit`` perturbs)
    modalities: tuple[str, ...] = ()

    def __init__(self, bundle: Bundle, **options: Any) -> None:
        self.bundle = bundle
        self.options = options

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
