"""GPU path of videoseg: a few DD-SAM2 training steps on CUDA at each paper recipe's full size
(SAM2.1 hiera-tiny 1024 px for EchoNet, MedSAM2 hiera-tiny 512 px x 8-frame clips for TrackRAD),
then export of the CUDA-trained run.

Run on a CUDA machine with ``pytest -m gpu tests/gpu/test_gpu_videoseg.py -s``; skipped elsewhere.
Random init (no weights offline), synthetic EchoNet-layout cines: this checks speed and plumbing,
not accuracy, so the export is forced past the copy-first-mask guard.
"""

from __future__ import annotations

import time

import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("recipe", ["dd_sam2_echonet", "dd_sam2_trackrad"])
def test_dd_sam2_recipe_steps_on_cuda_then_exports(recipe, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from medtransfer.apps.videoseg.data import import_echonet
    from medtransfer.apps.videoseg.export import export_run
    from medtransfer.apps.videoseg.synthetic import make_echonet_like
    from medtransfer.apps.videoseg.train import make_config, recipe_path, train
    from medtransfer.shared.rundir import RunDir

    root = make_echonet_like(tmp_path / "echo", n_videos=4, n_frames=24, splits=("TRAIN", "TRAIN", "VAL", "TEST"))
    manifest = import_echonet(root, tmp_path / "manifest.csv")
    # the recipe's model, clip length, batch and loss; 1 epoch of 2 draws (batch 2) per training video
    cfg = make_config(
        recipe_path(recipe),
        ["train.epochs=1", "data.clips_per_video=4", "train.device=cuda", "train.progress=false"],
    )
    steps = 2 * 4 // int(cfg["train"]["batch_size"])
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = train(manifest, tmp_path / "run", cfg)
    per_step = (time.perf_counter() - t0) / steps
    print(
        f"videoseg {recipe} on {torch.cuda.get_device_name()}: {cfg['model']['image_size']} px, "
        f"{cfg['data']['clip_len']}-frame clips x {cfg['train']['batch_size']}: {per_step * 1000:.0f} ms/step "
        f"incl. validation, peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB",
        flush=True,
    )
    t1 = time.perf_counter()
    bundle = export_run(out["run_dir"], tmp_path / "bundle", force=True)
    print(f"videoseg {recipe}: ONNX export of the CUDA-trained run on CPU took {time.perf_counter() - t1:.0f} s")
    assert RunDir(out["run_dir"]).info()["baseline"]["metric"] == "dice"
    assert (bundle / "metadata.json").is_file()
