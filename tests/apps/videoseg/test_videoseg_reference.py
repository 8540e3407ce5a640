"""videoseg and ``estimate`` / ``score``: the label's first labelled frame is the prompt (issue 13).

An EchoNet-layout manifest (``path,label,split,group,ed_frame,es_frame,fps,ef``; label = masks .npz)
has no ``mask`` / ``box`` column: export's reference cases, ``score`` and ``estimate`` prompt with the
label's first non-empty labelled frame, start tracking there, and use no other labelled frame.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from medtransfer.apps.videoseg.data import prompt_mask
from medtransfer.apps.videoseg.io import read_masks
from medtransfer.shared.utils.errors import InputError


def _rows(manifest: Path) -> list[dict[str, str]]:
    with open(manifest, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_videoseg_prompt_mask_skips_empty_frames() -> None:
    m = np.zeros((8, 8), np.uint8)
    m[2:5, 2:5] = 1
    p, first = prompt_mask({9: m * 0 + 1, 7: m, 3: np.zeros_like(m)})
    assert p == 7 and np.array_equal(first, m)
    with pytest.raises(InputError, match="empty"):
        prompt_mask({0: np.zeros_like(m), 4: np.zeros_like(m)}, "x.npz")


def test_videoseg_reference_json_from_echonet_manifest(vs_bundle: Path, vs_echo: dict) -> None:
    """Export wrote reference.json from the validation video (no prompt column in the manifest)."""
    from medtransfer.apps.videoseg.reference import reference_cases
    from medtransfer.shared.runtime.bundle import Bundle

    assert "mask" not in _rows(vs_echo["manifest"])[0] and "box" not in _rows(vs_echo["manifest"])[0]
    b = Bundle(vs_bundle)
    summary = b.meta["reference"]
    assert summary["available"], summary
    ref = json.loads((vs_bundle / "reference.json").read_text())
    n_val = sum(r["split"] == "val" for r in _rows(vs_echo["manifest"]))
    assert ref["n_cases"] == n_val and ref["n_errors"] == 0 and ref["kind"] == "segmentation"
    assert {"intensity_mean", "intensity_std", "hist_0"} <= set(ref["stats"])
    assert ref["outputs"]["area_mean"][0] > 0 and "prompt_frame" in ref["outputs"]
    # the reference cases carry the label file as the prompt, resolved against the manifest's folder
    cases = reference_cases(b.meta["run_dir"])
    assert len(cases) == n_val
    for c in cases:
        assert Path(c["extra"]["label_mask"]).is_file()
        assert read_masks(c["extra"]["label_mask"])  # the label .npz itself


def test_videoseg_score_and_estimate_take_label_as_prompt(vs_bundle: Path, vs_echo: dict, tmp_path: Path) -> None:
    """score / estimate on the EchoNet-layout manifest: every case answered, tracking starts on the
    first labelled frame, and changing any LATER labelled frame changes nothing."""
    from medtransfer.apps.videoseg.predict import VideoSegPredictor
    from medtransfer.shared.runtime import score as sc
    from medtransfer.shared.runtime.bundle import Bundle
    from medtransfer.shared.runtime.estimate import estimate

    b = Bundle(vs_bundle)
    cases = sc.cases_from_manifest(vs_echo["manifest"], b)
    test_ids = {r["path"] for r in _rows(vs_echo["manifest"]) if r["split"] == "test"}
    case = next(c for c in cases if c.case_id in test_ids)
    label = Path(case.extra["label_mask"])
    masks = read_masks(label)
    p = min(k for k, m in masks.items() if m.any())
    assert sc.cases_from_manifest(vs_echo["manifest"])[0].extra.get("label_mask") is None  # no bundle: no label

    pred = VideoSegPredictor(b, out_dir=str(tmp_path / "a"), gif="false")
    res = pred.answer(Path(case.path), **case.extra)
    assert res["prompt_frame"] == p
    out = np.load(res["masks"])["masks"]
    assert not out[:p].any() and out[p].any()

    # a label whose later frames are altered (ES mask emptied, an extra frame added) gives the same masks
    frames = sorted(masks)
    changed = {k: (masks[k] if k == p else np.zeros_like(masks[k])) for k in frames}
    changed[frames[-1] + 1] = np.ones_like(masks[p])
    alt = tmp_path / "alt.npz"
    np.savez_compressed(alt, masks=np.stack([changed[k] for k in sorted(changed)]), frames=np.array(sorted(changed)))
    res2 = VideoSegPredictor(b, out_dir=str(tmp_path / "b"), gif="false").answer(
        Path(case.path), **{**case.extra, "label_mask": str(alt)}
    )
    assert np.array_equal(np.load(res2["masks"])["masks"], out)
    # an explicit box column wins over the label
    res3 = pred.answer(Path(case.path), **{**case.extra, "box": "10,10,60,60"})
    assert res3["prompt_frame"] == 0

    # estimate on the manifest (labels unused for the estimate): no error rows, drift report present
    est = estimate(vs_bundle, tmp_path / "est.json", manifest=vs_echo["manifest"], progress=False, n_boot=0)
    assert est["n_errors"] == 0 and est["n_cases"] == len(cases)
    assert est["estimated_accuracy"] is None and "drift" in est
