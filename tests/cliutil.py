"""Run the ``medtransfer`` console entry point in-process, exactly as a user's shell would (``main()``)."""

from __future__ import annotations

import sys


def run_main(args: list[str], capsys) -> tuple[int, str, str]:
    """Call ``medtransfer.shared.cli.main.main`` with ``args``; returns (exit code, stdout, stderr)."""
    from medtransfer.shared.cli import main as cli

    old = sys.argv
    sys.argv = ["medtransfer", *[str(a) for a in args]]
    try:
        cli.main()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        sys.argv = old
    cap = capsys.readouterr()
    return code, cap.out, cap.err
