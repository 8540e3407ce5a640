"""Lazy mounting: ``medtransfer predict`` imports no app CLI and no tool module (cold start), while
``--help`` still lists every command and each lazily mounted command works."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

PROBE = textwrap.dedent("""
    import json, sys
    from medtransfer.shared.cli.main import main
    sys.argv = ["medtransfer", *json.loads(sys.argv[1])]
    try:
        main()
    except SystemExit as e:
        code = e.code
    mods = sorted(m for m in sys.modules if m.endswith(".cli") and m != "medtransfer.shared.cli" or ".cli.cmd_" in m)
    print("PROBE", json.dumps({"code": code, "mods": mods}))
""")


def _probe(args: list[str]) -> tuple[dict, str]:
    r = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True, text=True, timeout=120)
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("PROBE "))
    return json.loads(line[6:]), r.stdout + r.stderr


def test_predict_mounts_nothing_help_mounts_everything(tmp_path):
    res, out = _probe(["predict", str(tmp_path / "no_bundle"), str(tmp_path / "x.png")])
    assert res["code"] == 2 and "not a bundle" in out  # the predict path ran, to its one-line error
    assert res["mods"] == [], res["mods"]

    res, out = _probe(["--help"])
    assert res["code"] == 0
    for tool in ("rank", "estimate", "merge", "audit"):
        assert f"medtransfer.shared.cli.cmd_{tool}" in res["mods"]
        assert tool in out
    from medtransfer.shared.plugins import discover_apps

    for name, spec in discover_apps().items():
        if spec.cli:
            assert spec.cli.split(":")[0] in res["mods"] and name in out


def test_lazy_command_runs_and_unknown_command_is_refused():
    res, out = _probe(["merge", "--help"])
    assert res["code"] == 0 and "--base" in out
    assert res["mods"] == ["medtransfer.shared.cli.cmd_merge"]
    res, out = _probe(["eeg", "--help"])
    assert res["code"] == 0 and res["mods"] == ["medtransfer.apps.eeg.cli"]
    res, out = _probe(["mrege"])  # a typo still gets typer's suggestion, lazily mounted names included
    assert res["code"] == 2 and "No such command" in out and "'merge'" in out
