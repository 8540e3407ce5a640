"""One CLI grammar across every app: a new or edited app whose verbs or shared flags drift fails here.

Walks every app found by ``discover_apps()`` (image, cardiac, eeg, videoseg, wsi and any plugin):
each group has ``train`` and ``evaluate``; every visible manifest / output / recipe / override
option is spelled ``-m/--manifest``, ``-o/--out``, ``--recipe``, ``--set``; no visible positional
is a manifest or an output; no app repeats a core verb (``import``, ``export`` ...); old spellings answer with one line naming the new one (exit 2).
"""

from __future__ import annotations

import pytest
import typer
from cliutil import run_main

from medtransfer.shared.cli.grammar import MANIFEST_FLAGS, OUT_FLAGS, RECIPE_FLAGS, REQUIRED_VERBS, SET_FLAGS
from medtransfer.shared.plugins import discover_apps, load_object

#: every spelling of a shared option -> the one allowed set of spellings
SHARED = {flag: set(group) for group in (MANIFEST_FLAGS, OUT_FLAGS, RECIPE_FLAGS, SET_FLAGS) for flag in group}
#: parameter names that mean a shared option whatever their flags
NAMES = {
    "manifest": MANIFEST_FLAGS,
    "out": OUT_FLAGS,
    "recipe": RECIPE_FLAGS,
    "config": RECIPE_FLAGS,
    "set_": SET_FLAGS,
    "sets": SET_FLAGS,
    "overrides": SET_FLAGS,
}
#: old spellings of shared flags that must never be visible again
RETIRED = {"--config", "--output", "--manifest-csv", "--overrides", "--out-dir"}
#: the core's verbs serve every app: an app group must not repeat them
CORE_VERBS = {"import", "export", "verify", "predict", "score", "data"}
APPS = {name: spec for name, spec in discover_apps().items() if spec.cli}


def _group(name: str):
    return typer.main.get_command(load_object(APPS[name].cli))


def _visible(cmd) -> dict:
    return {n: c for n, c in cmd.commands.items() if not getattr(c, "hidden", False)}


def drift(group) -> list[str]:
    """Every grammar violation of one app group (empty: the app follows the grammar)."""
    problems = [f"no `{v}` command" for v in REQUIRED_VERBS if v not in _visible(group)]
    problems += [f"`{c}` repeats the core's `medtransfer {c}`" for c in sorted(CORE_VERBS & set(_visible(group)))]
    for cname, cmd in _visible(group).items():
        for p in cmd.params:
            if getattr(p, "hidden", False) or p.name == "help":
                continue
            flags = set(p.opts) | set(getattr(p, "secondary_opts", []) or [])
            if p.param_type_name == "argument":
                if p.name in ("manifest", "out"):
                    problems.append(f"{cname}: positional {p.name.upper()} (use {'/'.join(NAMES[p.name])})")
                continue
            want = NAMES.get(p.name)
            for f in flags:
                if f in SHARED and flags != SHARED[f]:
                    problems.append(
                        f"{cname}: {'/'.join(sorted(flags))} (the one spelling is {'/'.join(sorted(SHARED[f]))})"
                    )
                if f in RETIRED:
                    problems.append(f"{cname}: visible retired flag {f}")
            if want and flags != set(want):
                problems.append(f"{cname}: option '{p.name}' is {'/'.join(sorted(flags))} (want {'/'.join(want)})")
    return sorted(set(problems))


@pytest.mark.parametrize("name", sorted(APPS))
def test_every_app_follows_the_cli_grammar(name):
    assert drift(_group(name)) == [], name


def test_the_check_catches_a_drifting_app():
    drifting = typer.Typer()

    @drifting.command("train-view")
    def _t(manifest: str, out: str = typer.Option(..., "--out"), recipe: str = typer.Option(None, "--config")) -> None:
        """Old-style."""

    @drifting.command("export")
    def _e(run: str) -> None:
        """A per-app duplicate of the core's export."""

    @drifting.command("compare")
    def _c(manifest: str = typer.Option(..., "--manifest"), set_: str = typer.Option(None, "--set")) -> None:
        """Old-style."""

    got = drift(typer.main.get_command(drifting))
    assert "no `train` command" in got and "no `evaluate` command" in got
    assert any("positional MANIFEST" in g for g in got)
    assert any("--out" in g and "-o" in g for g in got)
    assert any("retired flag --config" in g for g in got)
    assert any(g.startswith("compare: --manifest") for g in got)
    assert "`export` repeats the core's `medtransfer export`" in got


def _main(args: list[str], capsys) -> tuple[int, str]:
    """(exit code, stderr) of the console entry point run in-process."""
    code, _, err = run_main(args, capsys)
    return code, err


@pytest.mark.parametrize(
    "args,new",
    [
        (["cardiac", "train-view", "m.csv", "--out", "r"], "`medtransfer cardiac train --stage view`"),
        (["cardiac", "train-grade", "m.csv", "--out", "r", "--init", "v"], "`medtransfer cardiac train --stage grade`"),
        (["cardiac", "compare", "m.csv", "--view-run", "v", "--out", "o"], "`medtransfer cardiac compare -m MANIFEST`"),
        (["cardiac", "phantoms", "ph"], "`medtransfer cardiac phantoms -o OUT`"),
        (
            ["videoseg", "import", "echonet_dynamic", "root", "--out", "m.csv"],
            "`medtransfer data import DATASET ROOT --out M`",
        ),
        (["videoseg", "export", "run", "--out", "b"], "`medtransfer export RUN --out B`"),
        (
            ["videoseg", "train", "-m", "m.csv", "-o", "r", "--config", "c.yaml"],
            "`medtransfer videoseg train --recipe FILE`",
        ),
        (["videoseg", "synth", "out"], "`medtransfer videoseg synth -o OUT`"),
        (["eeg", "train", "-m", "m.csv", "-o", "r", "--config", "c.yaml"], "`medtransfer eeg train --recipe FILE`"),
        (
            ["eeg", "transfer", "--source", "s.csv", "--target", "t.csv", "-o", "o", "--config", "c.yaml"],
            "`medtransfer eeg transfer --recipe FILE`",
        ),
    ],
)
def test_old_spellings_answer_with_one_line_naming_the_new_one(args, new, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, err = _main(args, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: `medtransfer ") and lines[0].endswith(f"is now {new}"), err
    assert list(tmp_path.iterdir()) == []  # nothing was done


def test_old_spellings_stay_out_of_help():
    for name in APPS:
        group = _group(name)
        for cname, cmd in group.commands.items():
            if cmd.hidden:
                continue
            shown = {f for p in cmd.params if not getattr(p, "hidden", False) for f in getattr(p, "opts", [])}
            assert "--config" not in shown, (name, cname)
    assert {"train-view", "train-grade"} <= {n for n, c in _group("cardiac").commands.items() if c.hidden}
    assert {"import", "export"} <= {n for n, c in _group("videoseg").commands.items() if c.hidden}
