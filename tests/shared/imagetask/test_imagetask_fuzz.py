"""Reader fuzzing: the core image task's reader (``read_image``, what predict / score / training call)
on mutated PNG / JPEG / BMP / TIFF must return or raise our one-line InputError, never a PIL exception
or a hang.  Seeds are small generated images."""

from __future__ import annotations

import numpy as np
import pytest

from medtransfer.shared.imagetask.data import read_image

PREP = {"size": 32, "grayscale": True, "mean": 0.5, "std": 0.25, "resize": "area"}

pytestmark = pytest.mark.fuzz


def _reader(path):
    read_image(path, PREP)


@pytest.mark.parametrize("fmt,ext", [("PNG", ".png"), ("JPEG", ".jpg"), ("BMP", ".bmp"), ("TIFF", ".tif")])
def test_fuzz_image_reader(fuzz, tmp_path, fmt, ext):
    from PIL import Image

    rng = np.random.default_rng(0)
    img = (rng.random((24, 28)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / f"seed{ext}", format=fmt)
    fuzz.run((tmp_path / f"seed{ext}").read_bytes(), ext, _reader, tmp_path)
