"""One CLI grammar for every app: the shared option spellings and the old-spelling hint.

Every app group has ``train`` and ``evaluate``; wherever a command takes a manifest, an output,
a recipe or overrides they are spelled ``-m/--manifest``, ``-o/--out``, ``--recipe`` and
``--set`` (``tests/shared/test_cli_grammar.py`` walks every discovered app and fails on drift).

Rule for old spellings (renamed verbs, flags and positionals): they stay accepted as hidden
commands / options, do nothing and end with ONE line naming the new spelling, exit 2
(:func:`renamed` raises :class:`RenamedError`, a ``MedTransferError``, which ``main()`` prints).
Known errors are never caught in the app CLIs: they propagate to ``main()`` (one line, exit 2).

Torch-free and light: imported by every app's ``cli.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn, Optional

import typer

from medtransfer.shared.utils.errors import MedTransferError

#: the one spelling of each shared option (click's ``opts`` of the parameter, in this order)
MANIFEST_FLAGS = ("-m", "--manifest")
OUT_FLAGS = ("-o", "--out")
RECIPE_FLAGS = ("--recipe",)
SET_FLAGS = ("--set",)
#: parameter name -> its required spelling (what the grammar test checks)
SPELLINGS = {"manifest": MANIFEST_FLAGS, "out": OUT_FLAGS, "recipe": RECIPE_FLAGS, "set_": SET_FLAGS}
#: verbs every app group must have
REQUIRED_VERBS = ("train", "evaluate")


class RenamedError(MedTransferError):
    """An old command / flag spelling; the message names the new one."""


def renamed(old: str, new: str) -> NoReturn:
    """Refuse an old spelling with one line naming the new one.

    Args:
        old: the old spelling after ``medtransfer`` (e.g. ``cardiac train-view``).
        new: the new spelling after ``medtransfer`` (e.g. ``cardiac train --stage view``).

    Raises:
        RenamedError: always (``main()`` prints it as ``error: ...`` and exits 2).
    """
    raise RenamedError(f"`medtransfer {old}` is now `medtransfer {new}`")


def manifest_option(default: Any = ..., help: str = "manifest CSV (path,label[,split,group])") -> Any:
    """``-m/--manifest``."""
    return typer.Option(default, *MANIFEST_FLAGS, help=help)


def out_option(default: Any = ..., help: str = "output folder") -> Any:
    """``-o/--out``."""
    return typer.Option(default, *OUT_FLAGS, help=help)


def recipe_option(help: str = "YAML recipe (defaults <- recipe <- --set)") -> Any:
    """``--recipe``."""
    return typer.Option(None, *RECIPE_FLAGS, help=help)


def set_option(help: str = "config override key=value (repeatable)") -> Any:
    """``--set``."""
    return typer.Option(None, *SET_FLAGS, help=help)


def old_option(flag: str) -> Any:
    """A hidden, accepted old flag (its value only triggers :func:`renamed`)."""
    return typer.Option(None, flag, hidden=True)


#: ``context_settings`` of a command whose old spelling had a positional (now an option): the
#: stray positional lands in ``ctx.args`` and the command calls :func:`renamed` (hidden from help)
OLD_POSITIONAL: dict[str, Any] = {"allow_extra_args": True}


def require(value: Optional[Path], flags: tuple[str, ...]) -> Path:
    """A required option that is declared optional (so that its old positional spelling can be
    recognised first); missing: a usage error (exit 2), like any missing required option.

    Returns:
        ``value``.
    """
    if value is None:
        raise typer.BadParameter("missing (required)", param_hint=" / ".join(f"'{f}'" for f in flags))
    return value


def add_renamed_command(app: typer.Typer, old_verb: str, old: str, new: str) -> None:
    """Register ``old_verb`` as a hidden command that accepts anything and prints the hint.

    Args:
        app: the app's typer group.
        old_verb: the old command name (``train-view``).
        old: old spelling for the hint (``cardiac train-view``).
        new: new spelling for the hint (``cardiac train --stage view``).
    """

    def _old(ctx: typer.Context) -> None:
        renamed(old, new)

    _old.__doc__ = f"Renamed: use `medtransfer {new}`."
    app.command(
        old_verb,
        hidden=True,
        add_help_option=False,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )(_old)
