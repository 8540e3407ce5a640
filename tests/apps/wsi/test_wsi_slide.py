from pathlib import Path

import numpy as np
import pytest

from medtransfer.apps.wsi.slide import (
    iter_tile_batches,
    open_slide,
    plan_tiles,
    read_tiles_plain,
    save_overlay,
    slide_mpp,
)
from medtransfer.shared.utils.errors import InputError


def test_tiling_on_generated_pyramid(slide_dir: Path, tmp_path: Path, tile_opts: dict) -> None:
    p = slide_dir / "good_a.tif"
    s = open_slide(p)
    assert s.level_count == 3 and slide_mpp(s, p) == pytest.approx(0.5)
    til, thumb, mask = plan_tiles(s, p, **tile_opts)
    # 2 um/px on a 0.5 um/px slide: read from level 2 (x4), 64 px tiles = 256 level-0 px
    assert til.patch_level == 2 and til.read_size == 64 and til.patch_size_level0 == 256
    assert 0 < len(til.coords) < (1024 // 256) * (768 // 256) + 1
    assert 0.05 < mask.mean() < 0.95
    assert (til.coords % 256 == 0).all()
    batches = list(iter_tile_batches(s, til, batch_size=4))
    idx = np.concatenate([b[0] for b in batches])
    assert sorted(idx.tolist()) == list(range(len(til.coords)))
    tiles = np.concatenate([b[1] for b in batches])
    assert tiles.shape[1:] == (64, 64, 3) and tiles.dtype == np.uint8
    plain = np.stack(list(read_tiles_plain(s, til)))
    np.testing.assert_array_equal(plain[idx], tiles)  # block reads give the same pixels
    png = save_overlay(thumb, mask, til, tmp_path / "ov.png")
    assert png.stat().st_size > 1000


def test_mpp_missing_needs_override(slide_dir: Path, tile_opts: dict) -> None:
    p = slide_dir / "no_mpp.tif"
    s = open_slide(p)
    with pytest.raises(InputError, match="--mpp"):
        plan_tiles(s, p, **tile_opts)
    til, _, _ = plan_tiles(s, p, mpp=0.5, **tile_opts)
    assert til.level0_mpp == 0.5 and len(til.coords) > 0


def test_blank_and_corrupt_slides(slide_dir: Path, tile_opts: dict) -> None:
    p = slide_dir / "blank.tif"
    with pytest.raises(InputError, match="tissue"):
        plan_tiles(open_slide(p), p, **tile_opts)
    with pytest.raises(InputError, match="cannot read"):
        open_slide(slide_dir / "corrupt.svs")
    with pytest.raises(InputError, match="not found"):
        open_slide(slide_dir / "missing.svs")


@pytest.mark.realdata
def test_real_cmu_slide_tiles(tmp_path: Path, cmu: Path) -> None:
    s = open_slide(cmu)
    til, thumb, mask = plan_tiles(s, cmu, target_mpp=0.5, patch_size=224)
    # 2220 x 2967 at 0.499 um/px: 9 x 13 grid, tissue covers a strip through the middle
    assert til.patch_level == 0 and til.patch_size_level0 == 224
    assert 30 <= len(til.coords) <= 80
    assert 0.2 < mask.mean() < 0.6
    png = save_overlay(thumb, mask, til, tmp_path / "cmu.png")
    assert png.stat().st_size > 10000
