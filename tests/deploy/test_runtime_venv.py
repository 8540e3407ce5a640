"""The base requirements alone (no extras, no torch) run ``predict`` and ``score``, checked offline.

A clean venv gets the project as a wheel built here (``pip wheel --no-deps --no-index``) and, for
its dependencies, only the distributions in the closure of medtransfer's base ``Requires-Dist``,
taken from the test's own environment: their files are linked into one folder that a ``.pth``
puts on the new venv's path.  Nothing is downloaded; ``pip check`` in the new venv proves the
closure satisfies every base requirement, and torch is not importable there.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PIP = ["-m", "pip", "--disable-pip-version-check", "--no-input"]


def base_closure(root: str = "medtransfer") -> dict[str, metadata.Distribution]:
    """Every installed distribution the base requirements of ``root`` need (extras left out).

    Returns:
        normalised name -> distribution, ``root`` itself excluded.

    Raises:
        LookupError: a requirement of the closure is not installed here.
    """
    from packaging.requirements import Requirement

    norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()  # noqa: E731
    found: dict[str, metadata.Distribution] = {}
    todo = [(root, "")]
    while todo:
        name, extra = todo.pop()
        dist = metadata.distribution(name)
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker and not req.marker.evaluate({"extra": extra}):
                continue
            key = norm(req.name)
            if key in found:
                continue
            try:
                found[key] = metadata.distribution(req.name)
            except metadata.PackageNotFoundError as e:
                raise LookupError(f"{req.name} (needed by {name}) is not installed here") from e
            todo += [(req.name, "")] + [(req.name, x) for x in req.extras]
    found.pop(norm(root), None)
    return found


def link_distributions(dists, dest: Path) -> list[str]:
    """Symlink each distribution's top-level site-packages entries (packages, modules, .libs,
    dist-info) into ``dest``; returns the linked names."""
    dest.mkdir(parents=True)
    linked = []
    for dist in dists:
        if dist.files is None:
            pytest.skip(f"{dist.metadata['Name']} has no RECORD: cannot tell its files apart")
        base = Path(dist.locate_file(""))
        for top in sorted({f.parts[0] for f in dist.files if f.parts and f.parts[0] != ".."}):
            src, dst = base / top, dest / top
            if src.exists() and not dst.exists() and top != "__pycache__" and not top.endswith(".pth"):
                dst.symlink_to(src)
                linked.append(top)
    return linked


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory) -> Path:
    """A venv holding the project wheel and the base-requirement closure only; returns its bin/."""
    work = tmp_path_factory.mktemp("rt")
    try:
        closure = base_closure()
    except (LookupError, metadata.PackageNotFoundError) as e:
        pytest.skip(f"the base requirements are not all installed in this environment: {e}")
    assert not {"torch", "torchvision", "torchaudio"} & set(closure), "torch is in the base requirements"
    src = work / "src"  # build from a copy: the wheel build writes build/ and egg-info beside its sources
    src.mkdir()
    for item in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / item, src / item)
    for pkg in ("shared", "apps"):
        shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run(
        [
            sys.executable,
            *PIP,
            "wheel",
            "-q",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "-w",
            str(work / "wheels"),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if r.returncode != 0 and "No module named" in r.stderr and ("setuptools" in r.stderr or "wheel" in r.stderr):
        pytest.skip("setuptools / wheel are not installed here, so the project wheel cannot be built offline")
    assert r.returncode == 0, r.stderr[-3000:]
    wheel = next((work / "wheels").glob("medtransfer-*.whl"))
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    link_distributions(closure.values(), work / "base_site")
    (Path(site) / "medtransfer_base_requirements.pth").write_text(str(work / "base_site") + "\n")
    r = subprocess.run(
        [str(py), *PIP, "install", "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([str(py), *PIP, "check"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"the base-requirement closure does not satisfy medtransfer:\n{r.stdout}{r.stderr}"
    return venv / "bin"


@pytest.mark.slow
def test_base_install_runs_predict_and_score_without_torch(runtime_venv, image_run, tmp_path):
    r = subprocess.run(
        [str(runtime_venv / "python"), "-c", "import importlib.util as u; print(u.find_spec('torch') is None)"],
        capture_output=True,
        text=True,
    )
    assert r.stdout.strip() == "True", "torch is importable from the base install"
    exe = runtime_venv / "medtransfer"
    img = sorted(Path(image_run["root"]).rglob("*.png"))[0]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    r = subprocess.run(
        [str(exe), "predict", str(image_run["bundle"]), str(img)], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["status"] == "ok"
    r = subprocess.run(
        [
            str(exe),
            "score",
            str(image_run["bundle"]),
            "--input-dir",
            str(img.parent),
            "--out",
            str(tmp_path / "s.csv"),
            "-q",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["ok"] > 0
