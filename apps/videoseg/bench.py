"""``medtransfer bench`` for videoseg: our streaming ONNX predictor vs sam2's ``SAM2VideoPredictor``.

Both run the same SAM2 weights (random init, no adapters: the same network) at the same config and
resolution on CPU.  Reported: frames/s of each (SAM2VideoPredictor timed from ``init_state`` on a
JPEG folder, which it requires, to the end of ``propagate_in_video``; ours from opening the AVI
to the last mask), their ratio, the per-frame Dice between the two, and the peak RSS of our
predictor (fresh process each) on 100 vs 400 frames of the same AVI.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

_RSS_SCRIPT = r"""
import json, resource, sys, time
from medtransfer.apps.videoseg.io import open_video
from medtransfer.apps.videoseg.predict import OnnxBackend
from medtransfer.apps.videoseg.propagate import StreamingPropagator
from medtransfer.shared.runtime.bundle import Bundle
bundle, video, n, box = sys.argv[1], sys.argv[2], int(sys.argv[3]), [float(v) for v in sys.argv[4].split(",")]
prop = StreamingPropagator(OnnxBackend(Bundle(bundle, verify=False)))
rd = open_video(video)
t = time.time(); areas = [int(m.sum()) for _, m in prop.run(rd.frames(0, n), n, box=box)]
dt = time.time() - t
print(json.dumps({"frames": len(areas), "seconds": dt, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "torch_loaded": "torch" in sys.modules}))
"""


def _rss_run(bundle: Path, video: Path, n: int, box: list[float]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(bundle), str(video), str(n), ",".join(map(str, box))],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench(
    frames: int = 24,
    image_size: int = 128,
    micro: bool = True,
    arch: str = "sam2.1_hiera_tiny",
    rss_frames: str = "100,400",
    threads: int = 0,
    **_: Any,
) -> dict[str, Any]:
    """Run the comparison.

    Args:
        frames: frames for the speed comparison.
        image_size: SAM2 input size for both predictors.
        micro: use the micro SAM2 config (fewer blocks; fast default); False = the full ``arch``.
        arch: SAM2 variant.
        rss_frames: comma-separated video lengths for the peak-RSS runs ("" = skip).
        threads: torch / ORT threads (0 = default).

    Returns:
        Measured numbers (JSON-serialisable).
    """
    import cv2
    import torch

    from medtransfer.apps.videoseg.export import export_model
    from medtransfer.apps.videoseg.io import open_video, write_avi
    from medtransfer.apps.videoseg.model import MICRO_OVERRIDES, build_model
    from medtransfer.apps.videoseg.predict import OnnxBackend
    from medtransfer.apps.videoseg.propagate import StreamingPropagator, mask_to_box
    from medtransfer.apps.videoseg.synthetic import make_cine
    from medtransfer.shared.export import write_bundle
    from medtransfer.shared.models.sam2_builder import build_sam2
    from medtransfer.shared.runtime.bundle import Bundle

    if threads:
        torch.set_num_threads(threads)
    overrides = list(MICRO_OVERRIDES) if micro else []
    torch.manual_seed(0)
    ours, _ = build_model({"arch": arch, "image_size": image_size, "adapter": "none", "overrides": overrides})
    tmp = Path(tempfile.mkdtemp(prefix="videoseg_bench_"))
    bundle = tmp / "bundle"
    t = time.time()
    export_model(ours, bundle)
    files = [p.name for p in bundle.glob("*.onnx")] + ["constants.npz"]
    write_bundle(
        bundle,
        name="bench",
        app="videoseg",
        task="track",
        files=files,
        inputs={},
        outputs={},
        preprocessing={"image_size": image_size},
    )
    export_s = time.time() - t
    n_max = max([frames] + [int(v) for v in rss_frames.split(",") if v.strip()])
    vid, masks, _ = make_cine(112, n_max, seed=7)
    avi = write_avi(tmp / "clip.avi", vid)
    box = mask_to_box(masks[0]).tolist()

    # ours: ONNX Runtime, lazy AVI reading
    prop = StreamingPropagator(OnnxBackend(Bundle(bundle, verify=False)))
    t = time.time()
    rd = open_video(avi)
    ours_masks = [m for _, m in prop.run(rd.frames(0, frames), frames, box=box)]
    ours_s = time.time() - t

    # sam2's own predictor, same weights and config, JPEG folder input
    jdir = tmp / "jpg"
    jdir.mkdir()
    for i, fr in enumerate(vid[:frames]):
        cv2.imwrite(str(jdir / f"{i:05d}.jpg"), fr, [cv2.IMWRITE_JPEG_QUALITY, 100])
    ref = build_sam2(arch, image_size=image_size, video_predictor=True, extra_overrides=overrides)
    sd = {k: v for k, v in ours.state_dict().items()}
    ref.load_state_dict(sd, strict=True)
    ref.eval()
    t = time.time()
    ref_masks: dict[int, np.ndarray] = {}
    with torch.inference_mode():
        state = ref.init_state(str(jdir), offload_video_to_cpu=True, offload_state_to_cpu=True)
        ref.add_new_points_or_box(state, frame_idx=0, obj_id=1, box=np.array(box, np.float32))
        for fi, _, logits in ref.propagate_in_video(state):
            ref_masks[fi] = (logits[0, 0] > 0).numpy().astype(np.uint8)
    ref_s = time.time() - t
    dice = []
    for i, m in enumerate(ours_masks):
        r = ref_masks[i]
        s = int(m.sum()) + int(r.sum())
        dice.append(1.0 if s == 0 else 2.0 * int((m & r).sum()) / s)
    res: dict[str, Any] = {
        "config": {
            "arch": arch,
            "micro": micro,
            "image_size": image_size,
            "video": "112x112 synthetic AVI",
            "frames": frames,
            "device": "cpu",
            "torch_threads": torch.get_num_threads(),
        },
        "export_seconds": round(export_s, 1),
        "ours_onnx_fps": round(frames / ours_s, 3),
        "sam2_video_predictor_fps": round(frames / ref_s, 3),
        "speedup": round(ref_s / ours_s, 3),
        "agreement_dice_mean": round(float(np.mean(dice)), 4),
        "agreement_dice_min": round(float(np.min(dice)), 4),
    }
    rss = {}
    for n in [int(v) for v in rss_frames.split(",") if v.strip()]:
        r = _rss_run(bundle, avi, n, box)
        rss[str(n)] = {
            "peak_rss_mb": round(r["peak_rss_mb"], 1),
            "fps": round(r["frames"] / r["seconds"], 3),
            "torch_loaded": r["torch_loaded"],
        }
    if rss:
        res["ours_peak_rss_mb"] = rss
        ks = list(rss)
        res["rss_growth_mb"] = round(rss[ks[-1]]["peak_rss_mb"] - rss[ks[0]]["peak_rss_mb"], 1)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return res
