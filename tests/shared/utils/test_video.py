"""Opening a damaged video leaves the job's stderr to the job: no FFmpeg decoder lines, no bytes of
the file echoed by OpenCV's AVI parser."""

from __future__ import annotations

import subprocess
import sys

import numpy as np


def _avi(path, n=24):
    import cv2

    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (64, 48), True)
    rng = np.random.default_rng(0)
    for _ in range(n):
        vw.write(rng.integers(0, 255, (48, 64, 3), np.uint8))
    vw.release()
    return path


def test_damaged_videos_open_without_library_noise(tmp_path):
    data = _avi(tmp_path / "ok.avi").read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[: len(data) // 3])  # FFmpeg: "[mjpeg @ 0x..] overread"
    (tmp_path / "stub.avi").write_bytes(data[:3000])  # OpenCV's parser: "Unexpected element ... Got: <bytes>"
    bent = bytearray(data)
    rng = np.random.default_rng(1)
    for i in rng.integers(4000, len(bent), 200):
        bent[i] = int(rng.integers(0, 256))
    (tmp_path / "bent.avi").write_bytes(bytes(bent))  # FFmpeg: "huffman table decode error", ...
    code = (
        "import sys\nfrom medtransfer.shared.utils.video import open_capture\n"
        "for name in sys.argv[1:]:\n"
        "    cap = open_capture(name); n = 0\n"
        "    while cap.isOpened():\n"
        "        ok, fr = cap.read()\n"
        "        if not ok: break\n"
        "        n += 1\n"
        "    cap.release(); print(name.rsplit('/', 1)[-1], n)\n"
    )
    names = [str(tmp_path / n) for n in ("ok.avi", "cut.avi", "stub.avi", "bent.avi")]
    p = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    got = dict(line.split() for line in p.stdout.splitlines())
    assert got["ok.avi"] == "24" and int(got["cut.avi"]) < 24 and got["stub.avi"] == "0"
    assert p.stderr == ""  # was: [mjpeg @ 0x..] lines, "Unexpected element. Expected: LIST. Got: ..."
