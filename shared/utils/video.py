"""Open a video file with OpenCV without its libraries writing to the job's stderr.  Torch-free.

A corrupt or truncated AVI made OpenCV print lines of its own around the job's one-line error:
FFmpeg's decoder (``[mjpeg @ 0x55..] huffman table decode error``, one line per damaged block) and
OpenCV's built-in AVI parser, which echoes bytes of the file (``Unexpected element. Expected: LIST.
Got: 2V.``: raw header bytes in a log).  Files are opened with the FFmpeg backend only (OpenCV's
built-in parser is never tried), FFmpeg logs nothing, and OpenCV logs errors only.  A user's own
``OPENCV_FFMPEG_LOGLEVEL`` / ``OPENCV_LOG_LEVEL`` is kept (for debugging a file).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

#: FFmpeg's AV_LOG_QUIET, read by OpenCV when it first starts FFmpeg (hence set before any capture)
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


@functools.cache  # once per process
def _quiet_opencv() -> None:
    import cv2

    if "OPENCV_LOG_LEVEL" not in os.environ:
        try:  # errors only: no warnings about the file
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        except (AttributeError, cv2.error):  # pragma: no cover - an OpenCV without the call
            pass


def open_capture(path: str | Path) -> Any:
    """``cv2.VideoCapture`` of a video file on the FFmpeg backend (any backend where OpenCV has no FFmpeg).

    Args:
        path: the file.

    Returns:
        The capture (check ``isOpened()``; release it).
    """
    import cv2

    _quiet_opencv()
    api = cv2.CAP_FFMPEG if cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG) else cv2.CAP_ANY
    return cv2.VideoCapture(str(path), api)
