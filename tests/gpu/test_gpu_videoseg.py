"""GPU path of videoseg: a few DD-SAM2 training steps on CUDA at each paper recipe's full size
(MedSAM2 hiera-tiny 512 px x 8-frame clips for TrackRAD, SAM2.1 hiera-tiny 1024 px for EchoNet),
then export of the CUDA-trained run.

Run on a CUDA machine with ``pytest -m gpu tests/gpu/test_gpu_videoseg.py -s``; skipped elsewhere.
The model starts from a local checkpoint file the test writes in the official layout
(``{"model": state_dict}`` named like the published file, random values): the recipe's
``model.checkpoint`` path is exercised and nothing is downloaded.  Synthetic EchoNet-layout cines
(AVI, read with OpenCV; the GPU machine has no SimpleITK for TrackRAD's .mha): this checks speed
and plumbing, not accuracy, so the export is forced past the copy-first-mask guard.

``MEDTRANSFER_GPU_TESTS_ON_CPU=1 pytest tests/gpu/test_gpu_videoseg.py -s`` runs the same steps on
the CPU at a small image size (a dry run before a GPU lease: minutes when idle, up to half an hour on 2 loaded cores).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

#: TrackRAD first: the recipe no GPU session has run yet
RECIPES = ("dd_sam2_trackrad", "dd_sam2_echonet")
CPU_SIZED = os.environ.get("MEDTRANSFER_GPU_TESTS_ON_CPU") == "1"
#: the CPU-sized variant: the recipe's model, clip length and batch at this image size
CPU_IMAGE_SIZE = 128
#: a frozen tensor of the image encoder: after training it must still hold the local file's values
FROZEN_KEY = "image_encoder.trunk.patch_embed.proj.weight"


def _local_checkpoint(arch: str, image_size: int, folder: Path) -> Path:
    """Write a checkpoint file shaped like the published one for ``arch`` (random values, seed 7)."""
    from medtransfer.shared.models.sam2_builder import SAM2_VARIANTS, build_sam2

    torch.manual_seed(7)
    sam = build_sam2(arch, image_size=image_size)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SAM2_VARIANTS[arch][1]  # e.g. MedSAM2_latest.pt, sam2.1_hiera_tiny.pt
    torch.save({"model": sam.state_dict()}, path)
    return path


def _steps_then_export(recipe: str, tmp_path: Path, device: str, image_size: int | None) -> None:
    """Train 1 epoch (2 draws x batch 2 per training video) on ``device``, then export the run on CPU."""
    from medtransfer.apps.videoseg.data import import_echonet
    from medtransfer.apps.videoseg.export import export_run
    from medtransfer.apps.videoseg.synthetic import make_echonet_like
    from medtransfer.apps.videoseg.train import make_config, recipe_path, train
    from medtransfer.shared.rundir import RunDir

    # 16 frames: room for TrackRAD's 8-frame clips; the export's reference statistics propagate the VAL video
    root = make_echonet_like(tmp_path / "echo", n_videos=4, n_frames=16, splits=("TRAIN", "TRAIN", "VAL", "TEST"))
    manifest = import_echonet(root, tmp_path / "manifest.csv")
    base = make_config(recipe_path(recipe))
    size = int(image_size or base["model"]["image_size"])
    ckpt = _local_checkpoint(base["model"]["arch"], size, tmp_path / "weights")
    overrides = [
        "train.epochs=1",
        "data.clips_per_video=4",
        f"train.device={device}",
        "train.progress=false",
        f"model.checkpoint={ckpt}",
    ]
    if image_size:
        overrides.append(f"model.image_size={image_size}")
    cfg = make_config(recipe_path(recipe), overrides)
    steps = 2 * 4 // int(cfg["train"]["batch_size"])
    cuda = device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = train(manifest, tmp_path / "run", cfg)
    per_step = (time.perf_counter() - t0) / steps
    where = torch.cuda.get_device_name() if cuda else "CPU"
    peak = f", peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if cuda else ""
    print(
        f"videoseg {recipe} on {where}: {cfg['model']['image_size']} px, {cfg['data']['clip_len']}-frame clips x "
        f"{cfg['train']['batch_size']}: {per_step * 1000:.0f} ms/step incl. validation{peak}",
        flush=True,
    )
    # the weights came from the local file: a frozen encoder tensor still holds its values
    trained = RunDir(out["run_dir"]).load_checkpoint("best")["model"][FROZEN_KEY]
    assert torch.equal(trained.cpu(), torch.load(ckpt, weights_only=True)["model"][FROZEN_KEY])
    t1 = time.perf_counter()
    bundle = export_run(out["run_dir"], tmp_path / "bundle", force=True)
    print(f"videoseg {recipe}: ONNX export of the {where}-trained run on CPU took {time.perf_counter() - t1:.0f} s")
    assert RunDir(out["run_dir"]).info()["baseline"]["metric"] == "dice"
    assert (bundle / "metadata.json").is_file()


@pytest.mark.gpu
@pytest.mark.parametrize("recipe", RECIPES)
def test_dd_sam2_recipe_steps_on_cuda_then_exports(recipe: str, tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    _steps_then_export(recipe, tmp_path, "cuda", None)


@pytest.mark.skipif(not CPU_SIZED, reason="CPU dry run of the GPU test: set MEDTRANSFER_GPU_TESTS_ON_CPU=1")
@pytest.mark.timeout(3600)  # 2 shared, loaded cores: training ~15 min and export ~15 min were seen
@pytest.mark.parametrize("recipe", RECIPES)
def test_dd_sam2_recipe_cpu_sized_dry_run(recipe: str, tmp_path: Path) -> None:
    _steps_then_export(recipe, tmp_path, "cpu", CPU_IMAGE_SIZE)
