"""What a file is, from its first bytes (not its name).  Torch-free."""

from __future__ import annotations

from pathlib import Path


def is_dicom(path: str | Path) -> bool:
    """Whether a file carries the DICOM preamble's ``DICM`` marker (bytes 128-131).

    Args:
        path: the file.

    Returns:
        True for a DICOM Part 10 file; False otherwise or when it cannot be read.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"
