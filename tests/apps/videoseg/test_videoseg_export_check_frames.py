"""The videoseg export's propagation checks shrink above FULL_PARITY_MAX_SIZE (1024 px CPU exports)."""

from __future__ import annotations

from medtransfer.apps.videoseg.export import FULL_PARITY_MAX_SIZE, check_frames


def test_check_frames_full_up_to_512_then_scaled_by_pixels_with_a_floor():
    assert FULL_PARITY_MAX_SIZE == 512
    for size in (128, 256, 512):
        assert check_frames(size, 8) == 8 and check_frames(size, 16) == 16
    assert check_frames(768, 16) == 7  # 16 * (512 / 768) ** 2
    assert check_frames(1024, 16) == 4 and check_frames(1024, 8) == 4
    assert check_frames(2048, 8) == 4  # never under the prompt frame + 3 tracked frames
