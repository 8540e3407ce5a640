"""``medtransfer bench --app wsi``: our tiling + feature extraction vs a plain ``read_region`` loop.

Both paths tile the same slide with the same tissue grid and the same encoder and threads:

* plain: one ``read_region`` per tile, then the encoder on that tile (the loop users write);
* ours: ``read_region`` on runs of adjacent tiles in a background thread, batched encoder
  (channels-last, inference mode) overlapping the reads.

Also reported: reading alone (tiles/s) for both readers.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np


def _default_slide(tmp: Path) -> Path:
    real = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "wsi" / "slides" / "CMU-1-Small-Region.svs"
    if real.is_file():
        return real.resolve()
    from medtransfer.apps.wsi.synthetic import make_slide

    return make_slide(tmp / "bench_slide.tif", size=(2048, 1536), seed=1)


def bench(
    slide: Optional[str] = None,
    encoder: str = "resnet18",
    batch_size: int = 32,
    max_tiles: int = 32,
    threads: int = 0,
    target_mpp: float = 0.5,
    patch_size: int = 224,
    **_: Any,
) -> dict[str, Any]:
    """Measure patches/s of both pipelines.

    Args:
        slide: slide file (default: the real CMU slide when present, else a generated TIFF).
        encoder: registry encoder.
        batch_size: batch of the batched pipeline.
        max_tiles: tiles measured (the first ones of the tissue grid).
        threads: torch threads (0 = torch default).
        target_mpp: tile resolution.
        patch_size: tile size.

    Returns:
        JSON-serialisable numbers (patches/s, ratios, setup).
    """
    import torch

    from medtransfer.apps.wsi.features import Encoder
    from medtransfer.apps.wsi.slide import iter_tile_batches, open_slide, plan_tiles, read_tiles_plain

    if threads:
        torch.set_num_threads(int(threads))
    with tempfile.TemporaryDirectory() as td:
        path = Path(slide) if slide else _default_slide(Path(td))
        s = open_slide(path)
        tiling, _, _ = plan_tiles(s, path, target_mpp, patch_size)
        tiling.coords = tiling.coords[:max_tiles]
        n = len(tiling.coords)
        enc = Encoder(encoder, None, "cpu", patch_size)
        enc(np.zeros((2, patch_size, patch_size, 3), np.uint8))  # warm-up

        t = time.perf_counter()
        for _ in read_tiles_plain(s, tiling):
            pass
        read_plain = n / (time.perf_counter() - t)
        t = time.perf_counter()
        for _ in iter_tile_batches(s, tiling, batch_size=batch_size):
            pass
        read_ours = n / (time.perf_counter() - t)

        t = time.perf_counter()
        feats_plain = [enc(tile[None]) for tile in read_tiles_plain(s, tiling)]
        plain = n / (time.perf_counter() - t)
        t = time.perf_counter()
        out = np.zeros((n, enc.feature_dim), np.float32)
        for idx, tiles in iter_tile_batches(s, tiling, batch_size=batch_size):
            out[idx] = enc(tiles)
        ours = n / (time.perf_counter() - t)
        same = float(np.max(np.abs(np.concatenate(feats_plain) - out)))
        s.close()
    return {
        "slide": Path(path).name,
        "tiles": n,
        "encoder": encoder,
        "device": str(enc.device),
        "torch_threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "read_only_tiles_per_s": {
            "plain_read_region_loop": round(read_plain, 1),
            "ours_block_prefetch": round(read_ours, 1),
            "ratio": round(read_ours / read_plain, 2),
        },
        "extract_patches_per_s": {
            "plain_read_region_loop": round(plain, 2),
            "ours": round(ours, 2),
            "ratio": round(ours / plain, 2),
        },
        "max_abs_feature_diff": same,
    }


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(bench(), indent=2))
