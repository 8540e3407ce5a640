"""Torch-free slide scoring: a feature bag (.h5) or a slide (tiled, encoded with the bundle's
``encoder.onnx``) -> risk, hazards and survival curve, with optional attention / survival plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medtransfer.apps.wsi.slide import SLIDE_SUFFIXES
from medtransfer.shared.runtime.predictor import Opt, Predictor
from medtransfer.shared.utils.errors import InputError, MedTransferError


class WSIPredictor(Predictor):
    """Scores one slide or feature bag per call.

    Options: ``out_dir`` + ``plot`` (write ``survival.png`` / ``attention.png`` into
    ``out_dir/<input key>/``, the key being the input's path relative to ``input_root`` without its
    suffix), ``mpp`` (level-0 MPP for slides without metadata), ``batch_size`` (tiles per encoder
    call), ``max_patches`` (cap on the bag size, first patches kept; 0 = all).

    Plausibility gates (``shared.runtime.gates.check_feature_bag``, limits overridable by the
    bundle's ``gates`` metadata): an empty bag, NaN / inf or ``|x| > feature_max_abs`` features
    (read from an .h5 or computed by the encoder) and non-finite model outputs are errors.
    """

    def __init__(self, bundle: Any, **options: Any) -> None:
        super().__init__(bundle, **options)
        self.gates = dict((getattr(bundle, "meta", None) or {}).get("gates") or {})

    suffixes = (".h5",) + SLIDE_SUFFIXES
    modalities = ("features",)
    options_spec = {
        "mpp": Opt("number", 0.01, 100.0),
        "batch_size": Opt("int", 1, 4096),
        "max_patches": Opt("int", 0, None),
    }
    preprocessing_spec = {
        "feature_dim": Opt("int", 1, 1_000_000),
        "risk_threshold": Opt("number"),
        "target_mpp": Opt("number", 0.01, 100.0),
        "patch_size": Opt("int", 16, 4096),
        "tissue_fraction_min": Opt("number", 0.0, 1.0),
    }

    def _features_from_slide(self, path: Path) -> tuple[np.ndarray, Any, Any, Any]:
        from medtransfer.apps.wsi.slide import iter_tile_batches, open_slide, plan_tiles

        pre = self.bundle.preprocessing
        if "encoder.onnx" not in (self.bundle.meta.get("files") or {}):
            raise InputError(path, "this bundle has no patch encoder: score feature bags (.h5) instead")
        mpp = self.options.get("mpp")
        slide = open_slide(path)
        try:
            tiling, thumb, mask = plan_tiles(
                slide,
                path,
                float(pre["target_mpp"]),
                int(pre["patch_size"]),
                float(mpp) if mpp not in (None, "") else None,
                float(pre.get("tissue_fraction_min", 0.25)),
            )
            feats = np.zeros((len(tiling.coords), int(pre["feature_dim"])), np.float32)
            bs = int(self.options.get("batch_size", 32))
            for idx, tiles in iter_tile_batches(slide, tiling, batch_size=bs):
                x = np.ascontiguousarray(tiles.transpose(0, 3, 1, 2), dtype=np.float32)
                feats[idx] = self.bundle.run({"tiles": x}, name="encoder.onnx")["features"]
        except MedTransferError:
            raise
        except Exception as e:  # the decoder's message may quote file content: the type only
            raise InputError(
                path, f"reading tiles failed (corrupt or unsupported tile data: {type(e).__name__})"
            ) from None
        finally:
            try:
                slide.close()
            except Exception:
                pass
        return feats, tiling, thumb, mask

    def _check_extraction(self, path: Path, attrs: dict[str, Any]) -> None:
        """Refuse a bag whose features are not the model's: another encoder (int8 of the same one
        is accepted: its extraction passed the cosine check against fp32), tile MPP or tile size,
        as its attributes and the training bags' record (``bag_extraction``) say.  Bags of other
        tools that record none, and bundles of runs on in-memory bags, are not checked.

        Raises:
            InputError: one line naming the difference and the model's extraction.
        """
        from medtransfer.apps.wsi.features import SCORING_KEYS, extraction_mismatch, shown_value

        want = self.bundle.preprocessing.get("bag_extraction") or {}
        diff = extraction_mismatch(attrs, want, SCORING_KEYS, int8_alike=True) if want else None
        if diff:
            names = {"encoder": "encoder", "mpp": "target MPP", "patch_size": "patch size"}
            names |= {"weights_sha256": "weights sha256", "encoder_onnx_sha256": "--encoder-onnx sha256"}
            model = ", ".join(
                f"{names.get(k, k)} {shown_value(want[k], 16 if k.endswith('_sha256') else 64)}"
                for k in SCORING_KEYS
                if k in want
            )
            raise InputError(
                path, f"extracted otherwise than the model's training bags ({diff}); extract it with theirs: {model}"
            )

    def predict(self, path: Path, **case: Any) -> dict[str, Any]:
        """Score one input.

        Returns:
            ``{"risk", "risk_group", "hazards", "survival", "bin_edges_months", "n_patches",
            "top_patches" (coords of the most attended tiles), "plots"}``.
        """
        from medtransfer.apps.wsi.features import read_bag
        from medtransfer.shared.runtime.gates import check_feature_bag

        path = Path(path)
        pre = self.bundle.preprocessing
        tiling = thumb = mask = None
        if path.suffix.lower() not in (".h5",) + SLIDE_SUFFIXES:
            raise InputError(path, f"not a feature bag (.h5) or a slide ({', '.join(SLIDE_SUFFIXES)})")
        out_dir = self.artefact_dir(path) if self.options.get("plot") else None  # refuse a clash before any work
        if path.suffix.lower() == ".h5":
            feats, coords, attrs = read_bag(path, self.gates)
            self._check_extraction(path, attrs)
        else:
            feats, tiling, thumb, mask = self._features_from_slide(path)
            coords = tiling.coords
            check_feature_bag(feats, path, self.gates)  # the encoder's output passes the same gate
        feats = self.perturbed(feats, "features")  # medtransfer audit (identity otherwise)
        dim = int(pre["feature_dim"])
        if feats.shape[1] != dim:
            raise InputError(path, f"features are {feats.shape[1]}-d but the model expects {dim}-d (other encoder?)")
        cap = int(self.options.get("max_patches", 0) or 0)
        if cap and len(feats) > cap:
            feats, coords = feats[:cap], coords[:cap]
        out = self.bundle.run(
            {"features": feats[None].astype(np.float32), "mask": np.ones((1, len(feats)), np.float32)}
        )
        risk = float(out["risk"][0])
        attn = out["attention"][0]
        if not (np.isfinite(risk) and np.all(np.isfinite(out["hazards"])) and np.all(np.isfinite(out["survival"]))):
            raise InputError(path, "the model gave a non-finite risk for this bag; refusing to answer")
        thr = pre.get("risk_threshold")
        top = np.argsort(-attn)[:5]
        res: dict[str, Any] = {
            "risk": risk,
            "risk_group": ("high" if risk > float(thr) else "low") if thr is not None else "",
            "hazards": [round(float(v), 6) for v in out["hazards"][0]],
            "survival": [round(float(v), 6) for v in out["survival"][0]],
            "bin_edges_months": pre.get("bin_edges_months"),
            "n_patches": int(len(feats)),
            "top_patches": [[int(coords[i][0]), int(coords[i][1])] for i in top],
        }
        if out_dir is not None:
            res["plots"] = self._plots(out_dir, path, res, attn, tiling, thumb, mask)
        return res

    def _plots(
        self, out_dir: Path, path: Path, res: dict[str, Any], attn: np.ndarray, tiling: Any, thumb: Any, mask: Any
    ) -> list[str]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        out_dir.mkdir(parents=True, exist_ok=True)
        stem = path.stem
        edges = np.asarray(res["bin_edges_months"], float)
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        ax.step(np.concatenate([[0], edges[1:]]), np.concatenate([[1], res["survival"]]), where="post")
        ax.set_xlabel("months")
        ax.set_ylabel("predicted survival")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{stem[:30]} risk {res['risk']:.2f} {res['risk_group']}", fontsize=8)
        fig.tight_layout()
        p1 = out_dir / "survival.png"
        fig.savefig(p1, dpi=100)
        plt.close(fig)
        plots = [str(p1)]
        if tiling is not None:
            from medtransfer.apps.wsi.slide import save_overlay

            plots.append(str(save_overlay(thumb, mask, tiling, out_dir / "attention.png", scores=attn)))
        return plots
