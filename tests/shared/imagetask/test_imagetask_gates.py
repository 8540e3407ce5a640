"""The core image task's reader and predictor: header size checked before decoding, library errors as
one line, blank images unreliable, importer paths relative to the CSV."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from medtransfer.shared.imagetask.data import import_image_folder, load_image, make_shapes
from medtransfer.shared.manifest import read_manifest
from medtransfer.shared.utils.errors import InputError

PREP = {"size": 32, "grayscale": True, "mean": 0.5, "std": 0.25, "resize": "area"}


def png_declaring(path: Path, width: int, height: int, rows: int = 64) -> Path:
    """A small grey PNG whose header declares ``width`` x ``height`` (only ``rows`` rows of data)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    raw = zlib.compress((b"\x00" + bytes(width)) * rows, 9)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("w,h", [(30000, 30000), (9000, 9000), (8, 8)])
def test_implausible_png_refused_before_decoding(tmp_path, monkeypatch, w, h):
    from PIL import Image

    p = png_declaring(tmp_path / "x.png", w, h, rows=min(h, 64))

    def no_decode(*_a, **_k):
        raise AssertionError("pixels decoded before the header's size was checked")

    monkeypatch.setattr(Image.Image, "load", no_decode)
    with pytest.raises(InputError) as e:
        load_image(p, PREP)
    msg = str(e.value)
    assert "x.png" in msg and (f"{w}x{h}" in msg or "implausibly large" in msg) and "\n" not in msg


def test_bad_palette_bmp_is_one_line(tmp_path):
    """Found by fuzzing: a BMP with a corrupt palette size made PIL raise ValueError past the reader."""
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((24, 28)) * 255).astype(np.uint8)).save(tmp_path / "s.bmp")
    b = bytearray((tmp_path / "s.bmp").read_bytes())
    b[46:50] = struct.pack("<I", 1000)  # biClrUsed: 1000 palette entries for an 8-bit image
    (tmp_path / "bad.bmp").write_bytes(bytes(b))
    with pytest.raises(InputError) as e:
        load_image(tmp_path / "bad.bmp", PREP)
    assert "bad.bmp" in str(e.value)


def test_relative_root_and_out_from_another_cwd(tmp_path, monkeypatch):
    make_shapes(tmp_path / "data" / "shapes", n_per_class=2, size=32)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    out = import_image_folder("../data/shapes", "sub/m.csv")
    recs = read_manifest(tmp_path / "work" / "sub" / "m.csv")
    assert Path(out) == Path("sub/m.csv") and len(recs) == 6
    assert all(r.path.is_file() for r in recs) and all(r.rel.startswith("../../data/shapes/") for r in recs)


def test_blank_image_is_unreliable(image_run, tmp_path):
    from PIL import Image

    from medtransfer.shared.runtime.bundle import load_bundle
    from medtransfer.shared.runtime.predictor import build_predictor

    pred = build_predictor(load_bundle(image_run["bundle"]))
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "blank.png")
    res = pred.predict(tmp_path / "blank.png")
    assert res["unreliable"] is True and any("blank / constant" in r for r in res["reasons"])
    shape = next((image_run["root"] / "circle").glob("*.png"))
    ok = pred.predict(shape)
    assert not ok.get("unreliable") and "reasons" not in ok
