"""Plausibility gates of the cardiac readers and predictor: sizes from headers before decoding,
implausible video geometry as one-line errors, blank input marked unreliable, artefacts only under
--out (keyed by the input's path), and one-line CLI errors on an empty folder."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from medtransfer.apps.cardiac.io import read_frames
from medtransfer.apps.cardiac.synthetic import cine, write_dicom
from medtransfer.shared.utils.errors import InputError


def png_declaring(path: Path, width: int, height: int, rows: int = 64) -> Path:
    """A small grey PNG whose header declares ``width`` x ``height`` (only ``rows`` rows of data)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    raw = zlib.compress((b"\x00" + bytes(width)) * rows, 9)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
    return path


def _no_decode(*_a, **_k):
    raise AssertionError("pixels decoded before the header's size was checked")


def test_png_declaring_30000_is_refused_before_decoding(tmp_path, monkeypatch):
    import cv2

    p = png_declaring(tmp_path / "huge.png", 30000, 30000)
    monkeypatch.setattr(cv2, "imdecode", _no_decode)
    monkeypatch.setattr(cv2, "imread", _no_decode)
    with pytest.raises(InputError) as e:
        read_frames(p)
    msg = str(e.value)
    assert "huge.png" in msg and ("30000" in msg or "implausibly large" in msg) and "\n" not in msg


@pytest.mark.parametrize("field,value,words", [("Rows", 30000, "30000"), ("NumberOfFrames", 100000, "frames")])
def test_dicom_header_checked_before_pixel_data(tmp_path, monkeypatch, field, value, words):
    import pydicom

    p = write_dicom(tmp_path / "c.dcm", cine("A4C", 8, 2, size=(32, 40)), "rgb")
    ds = pydicom.dcmread(p)
    setattr(ds, field, value)
    ds.save_as(p)
    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(_no_decode))
    with pytest.raises(InputError) as e:
        read_frames(p)
    assert words in str(e.value) and "DOE" not in str(e.value)


class FakeCapture:
    """cv2.VideoCapture stand-in declaring a geometry; decoding a frame fails the test."""

    def __init__(self, w: int, h: int, n: int) -> None:
        self.props = {3: float(w), 4: float(h), 7: float(n), 5: 25.0}  # WIDTH, HEIGHT, COUNT, FPS
        self.reads = 0

    def __call__(self, *_a):
        return self

    def isOpened(self) -> bool:
        return True

    def get(self, prop: int) -> float:
        return self.props.get(int(prop), 0.0)

    def read(self):
        w, h = int(self.props[3]), int(self.props[4])
        self.reads += 1
        if self.reads > 50:  # the fake clip really holds 50 frames, whatever it declares
            return False, None
        if w * h > 4096 * 4096:
            raise AssertionError("frame decoded before the header's geometry was checked")
        return True, np.full((max(h, 1), max(w, 1), 3), 128, np.uint8)

    def set(self, *_a) -> bool:
        return True

    def release(self) -> None:
        pass


@pytest.mark.parametrize(
    "w,h,n,words",
    [(0, 0, 10, "no pixels"), (1, 1, 10, "smaller"), (64, 64, 100000, "frames"), (50000, 20, 3, "exceeds")],
)
def test_implausible_video_geometry_is_one_line_error(tmp_path, monkeypatch, w, h, n, words):
    import cv2

    p = tmp_path / "clip.avi"
    p.write_bytes(b"RIFF0000AVI LIST")
    monkeypatch.setattr(cv2, "VideoCapture", FakeCapture(w, h, n))
    with pytest.raises(InputError) as e:
        read_frames(p)
    assert words in str(e.value) and "clip.avi" in str(e.value) and "\n" not in str(e.value)


def test_video_frames_not_all_held(tmp_path, monkeypatch):
    """A declared 5000-frame clip keeps only max_frames frames (read one by one)."""
    import cv2

    p = tmp_path / "long.avi"
    p.write_bytes(b"RIFF0000AVI LIST")
    fake = FakeCapture(64, 48, 5000)
    calls = {"n": 0}

    def read():
        calls["n"] += 1
        if calls["n"] > 5000:
            return False, None
        return True, np.random.default_rng(calls["n"]).integers(0, 255, (48, 64, 3), dtype=np.uint8)

    fake.read = read
    monkeypatch.setattr(cv2, "VideoCapture", fake)
    frames, _ = read_frames(p, max_frames=4)
    assert len(frames) == 4


def test_empty_folder_is_one_line(tmp_path, monkeypatch, capsys):
    """`medtransfer cardiac train -m EMPTY -o R` (both stages; and data import echo_folder): one line, no traceback."""
    import sys

    from medtransfer.shared.cli.main import main

    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    for argv in (
        ["cardiac", "train", "-m", "empty", "-o", "r"],
        ["cardiac", "train", "--stage", "grade", "-m", "empty", "-o", "r"],
        ["data", "import", "echo_folder", "empty", "--out", "m.csv"],
    ):
        monkeypatch.setattr(sys, "argv", ["medtransfer", *argv])
        with pytest.raises(SystemExit) as ex:
            main()
        err = capsys.readouterr().err
        assert ex.value.code == 2, argv
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith("error: empty: no images found (looked for .png, .jpg"), err
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------- predictor (bundle)
def test_blank_and_constant_images_are_unreliable(bundle, tmp_path):
    import cv2

    from medtransfer.shared.runtime.bundle import load_bundle
    from medtransfer.shared.runtime.predictor import build_predictor

    pred = build_predictor(load_bundle(bundle))
    for name, val in (("black.png", 0), ("grey.png", 128)):
        cv2.imwrite(str(tmp_path / name), np.full((96, 128, 3), val, np.uint8))
        res = pred.predict(tmp_path / name)
        assert res["unreliable"] is True
        assert any("blank / constant" in r for r in res["reasons"]), res["reasons"]
    frames = cine("A4C", 8, 1, seed=2, size=(96, 128))
    cv2.imwrite(str(tmp_path / "echo.png"), frames[0])
    assert not any("blank" in r for r in pred.predict(tmp_path / "echo.png")["reasons"])


def test_contact_sheets_keyed_by_input_and_never_beside_inputs(bundle, tmp_path, monkeypatch):
    """Two inputs with one stem get two contact sheets under --out; without --out nothing is written."""
    from typer.testing import CliRunner

    from medtransfer.apps.cardiac.synthetic import write_gif
    from medtransfer.shared.cli.main import app

    frames = cine("PL", 8, 2, seed=4, size=(96, 128))
    for d in ("a", "b"):
        (tmp_path / "in" / d).mkdir(parents=True)
        write_gif(tmp_path / "in" / d / "clip.gif", frames)
    ins = [str(tmp_path / "in" / "a" / "clip.gif"), str(tmp_path / "in" / "b" / "clip.gif")]
    r = CliRunner().invoke(app, ["predict", str(bundle), *ins, "--out", str(tmp_path / "o"), "--plot"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in r.output.splitlines() if x.startswith("{")]
    sheets = {row["contact_sheet"] for row in rows}
    assert sheets == {
        str(tmp_path / "o" / "a" / "clip" / "crops.png"),
        str(tmp_path / "o" / "b" / "clip" / "crops.png"),
    }
    assert all(Path(s).is_file() for s in sheets)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "in").rglob("*"))
    r = CliRunner().invoke(app, ["predict", str(bundle), ins[0], "--plot"])
    assert r.exit_code == 0, r.output
    row = json.loads(r.output.strip().splitlines()[-1])
    assert row["contact_sheet"] is None and "--out" in row["artefacts"]
    assert (
        list(work.iterdir()) == [] and sorted(p.relative_to(tmp_path) for p in (tmp_path / "in").rglob("*")) == before
    )


def test_broken_palette_lut_is_one_line(tmp_path):
    """Found by fuzzing the real Aloka palette DICOM: a malformed LUT made pydicom raise ValueError."""
    import pydicom

    p = write_dicom(tmp_path / "pal.dcm", cine("SC", 8, 1, size=(32, 40)), "palette")
    ds = pydicom.dcmread(p)
    ds.RedPaletteColorLookupTableData = ds.RedPaletteColorLookupTableData[:10]
    ds.save_as(p)
    with pytest.raises(InputError) as e:
        read_frames(p)
    assert "pal.dcm" in str(e.value) and "DOE" not in str(e.value)


def test_score_on_empty_folder_names_what_was_looked_for(bundle, tmp_path):
    from medtransfer.shared.runtime.bundle import load_bundle
    from medtransfer.shared.runtime.score import cases_from_dir

    (tmp_path / "studies").mkdir()
    with pytest.raises(InputError, match=r"no images found \(looked for \.png, \.jpg"):
        cases_from_dir(tmp_path / "studies", load_bundle(bundle))
