"""`score` loses nothing and never doubles or destroys results: lock, refusals, path normalisation."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from medtransfer.shared.runtime.score import BASE_COLUMNS, Case, score


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m medtransfer.shared.cli.main ARGS`` (the console script path, main() included)."""
    return subprocess.run(
        [sys.executable, "-m", "medtransfer.shared.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-2000:]
    return lines[0]


def manifest_cases(image_run) -> int:
    return len(rows(Path(image_run["manifest"])))


def small_manifest(image_run, tmp_path: Path, n: int = 4) -> tuple[Path, list[Path]]:
    imgs = sorted(Path(image_run["root"]).rglob("*.png"))[:n]
    man = tmp_path / "m.csv"
    man.write_text("path,label\n" + "".join(f"{p},\n" for p in imgs))
    return man, imgs


# ---------------------------------------------------------------------------------- the lock
def test_two_jobs_on_one_out_one_refuses_the_other_scores_each_case_once(image_run, tmp_path):
    out = tmp_path / "r.csv"
    cmd = [
        sys.executable,
        "-m",
        "medtransfer.shared.cli.main",
        "score",
        str(image_run["bundle"]),
        "-m",
        str(image_run["manifest"]),
        "--out",
        str(out),
        "--resume",
        "--workers",
        "2",
        "-q",
    ]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    res = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in res)
    assert codes == [0, 2], [(r[0], r[2][-1500:]) for r in res]
    err = next(r[2] for r in res if r[0] == 2).strip().splitlines()
    assert len(err) == 1 and "already being written by pid " in err[0] and socket.gethostname() in err[0], err
    got = [x["case"] for x in rows(out)]
    n = manifest_cases(image_run)
    assert len(got) == len(set(got)) == n
    assert all(x["status"] == "ok" and x["bundle_sha256"] for x in rows(out))
    assert not Path(str(out) + ".lock").exists()  # removed on a clean exit


def test_lock_names_the_holder_and_dies_with_it(image_run, tmp_path):
    out = tmp_path / "r.csv"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time\nfrom medtransfer.shared.runtime.score import lock_output\n"
                f"with lock_output({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(600)\n"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        man, imgs = small_manifest(image_run, tmp_path)
        msg = one_line_error(cli("score", image_run["bundle"], "-m", man, "--out", out, "--resume", "-q"))
        assert f"already being written by pid {holder.pid} on {socket.gethostname()}" in msg
        assert not out.exists()  # nothing was written
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # the kernel drops the lock: the stale lock file blocks nothing
        holder.wait()
    assert Path(str(out) + ".lock").exists()
    r = cli("score", image_run["bundle"], "-m", man, "--out", out, "--resume", "-q")
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(x["case"] for x in rows(out)) == sorted(str(p) for p in imgs)


# ------------------------------------------------------------------------- nothing destroyed
def test_out_as_the_manifest_is_refused_and_the_manifest_kept(image_run, tmp_path):
    man, _ = small_manifest(image_run, tmp_path)
    before = man.read_bytes()
    for extra in ([], ["--resume"], ["--overwrite"]):
        msg = one_line_error(cli("score", image_run["bundle"], "-m", man, "--out", man, *extra, "-q"))
        assert "manifest" in msg
        assert man.read_bytes() == before


def test_out_as_an_input_or_inside_the_input_folder_is_refused(image_run, tmp_path):
    man, imgs = small_manifest(image_run, tmp_path)
    before = imgs[1].read_bytes()
    msg = one_line_error(cli("score", image_run["bundle"], "-m", man, "--out", imgs[1], "--overwrite", "-q"))
    assert "input of case" in msg and imgs[1].read_bytes() == before
    folder = imgs[0].parent
    listing = sorted(p.name for p in folder.iterdir())
    msg = one_line_error(cli("score", image_run["bundle"], "-i", folder, "--out", folder / "r.png", "-q"))
    assert "inside the input folder" in msg
    assert sorted(p.name for p in folder.iterdir()) == listing  # nothing created there, not even a lock
    msg = one_line_error(
        cli("score", image_run["bundle"], "-m", man, "--out", Path(image_run["bundle"]) / "r.csv", "-q")
    )
    assert "inside the bundle" in msg


def test_rerun_without_resume_is_refused_overwrite_replaces(image_run, tmp_path):
    man, imgs = small_manifest(image_run, tmp_path)
    out = tmp_path / "r.csv"
    assert cli("score", image_run["bundle"], "-m", man, "--out", out, "-q").returncode == 0
    before = out.read_bytes()
    msg = one_line_error(cli("score", image_run["bundle"], "-m", man, "--out", out, "-q"))
    assert "already exists (4 rows)" in msg and "--resume" in msg and "--overwrite" in msg
    assert out.read_bytes() == before
    # --overwrite with a broken bundle: refused before scoring starts, the old results survive
    msg = one_line_error(cli("score", tmp_path / "no_bundle", "-m", man, "--out", out, "--overwrite", "-q"))
    assert "no_bundle" in msg and out.read_bytes() == before
    r = cli("score", image_run["bundle"], "-m", man, "--out", out, "--overwrite", "-q")
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(x["case"] for x in rows(out)) == sorted(str(p) for p in imgs)


def test_a_foreign_file_as_out_is_never_replaced_without_overwrite(image_run, tmp_path):
    man, _ = small_manifest(image_run, tmp_path)
    out = tmp_path / "notes.csv"
    out.write_text("a,b\n1,2\n")
    msg = one_line_error(cli("score", image_run["bundle"], "-m", man, "--out", out, "--resume", "-q"))
    assert "not a results file" in msg and out.read_text() == "a,b\n1,2\n"


def test_resume_against_another_bundle_is_refused_unless_overwrite(image_run, tmp_path):
    man, imgs = small_manifest(image_run, tmp_path)
    out = tmp_path / "r.csv"
    assert cli("score", image_run["bundle"], "-m", man, "--out", out, "-q").returncode == 0
    old = rows(out)[:2]
    with open(out, "w", newline="") as f:  # the first two cases were scored by another bundle
        w = csv.DictWriter(f, fieldnames=BASE_COLUMNS)
        w.writeheader()
        w.writerows({**r, "bundle_sha256": "0" * 64} for r in old)
    before = out.read_bytes()
    msg = one_line_error(cli("score", image_run["bundle"], "-m", man, "--out", out, "--resume", "-q"))
    assert "another bundle" in msg and out.read_bytes() == before
    r = cli("score", image_run["bundle"], "-m", man, "--out", out, "--resume", "--overwrite", "-q")
    assert r.returncode == 0, r.stderr[-2000:]
    got = rows(out)
    assert sorted(x["case"] for x in got) == sorted(str(p) for p in imgs)
    assert {x["bundle_sha256"] for x in got} == {old[0]["bundle_sha256"]}  # only this bundle's rows
    # --resume --overwrite on this bundle's own rows resumes (nothing is rescored)
    r = cli("score", image_run["bundle"], "-m", man, "--out", out, "--resume", "--overwrite", "-q")
    assert r.returncode == 0 and json.loads(r.stdout.splitlines()[-1])["skipped"] == 4
    assert len(rows(out)) == 4


def test_unwritable_out_is_one_line_before_any_work(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    # the bundle does not exist either: the --out problem is found first, before the bundle is read
    msg = one_line_error(
        cli("score", tmp_path / "no_bundle", "-i", tmp_path / "in", "--out", blocker / "sub" / "r.csv")
    )
    assert str(blocker / "sub" / "r.csv") in msg and "no_bundle" not in msg
    msg = one_line_error(cli("score", tmp_path / "no_bundle", "-i", tmp_path / "in", "--out", tmp_path))
    assert "is a folder" in msg


# ---------------------------------------------------------------- one row per case, paths normalised
def test_one_file_spelled_three_ways_is_one_case(image_run, tmp_path):
    img = min(Path(image_run["root"]).rglob("*.png"))
    (tmp_path / "a.png").write_bytes(img.read_bytes())
    (tmp_path / "link.png").symlink_to(tmp_path / "a.png")
    man = tmp_path / "m.csv"
    man.write_text(f"path,label\na.png,\n./a.png,\n{tmp_path / 'a.png'},\nlink.png,\n")
    out = tmp_path / "r.csv"
    r = cli("score", image_run["bundle"], "-m", man, "--out", out, "-q")
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads(r.stdout.splitlines()[-1])
    assert [x["case"] for x in rows(out)] == ["a.png"] and s["duplicates"] == 3 and s["ok"] == 1
    # resuming with the file listed under another spelling scores nothing again
    man.write_text("path,label\n./a.png,\n")
    r = cli("score", image_run["bundle"], "-m", man, "--out", out, "--resume", "-q")
    assert r.returncode == 0 and json.loads(r.stdout.splitlines()[-1])["skipped"] == 1
    assert len(rows(out)) == 1


def _bad_entries(folder: Path) -> None:
    (folder / "folder.png").mkdir()
    (folder / "loop.png").symlink_to(folder / "loop.png")
    (folder / "dangling.png").symlink_to(folder / "gone.png")


def test_every_listed_case_gets_one_row_saying_what_it_is(image_run, tmp_path):
    img = min(Path(image_run["root"]).rglob("*.png"))
    (tmp_path / "good.png").write_bytes(img.read_bytes())
    _bad_entries(tmp_path)
    man = tmp_path / "m.csv"
    man.write_text("path,label\ngood.png,\nfolder.png,\nloop.png,\ndangling.png,\nmissing.png,\n")
    s = score(
        image_run["bundle"],
        [Case(c, str(tmp_path / c), {}) for c in ("good.png", "folder.png", "loop.png", "dangling.png", "missing.png")],
        tmp_path / "r.csv",
        progress=False,
    )
    assert s["ok"] == 1 and s["error"] == 4
    got = {x["case"]: x for x in rows(tmp_path / "r.csv")}
    assert got["good.png"]["status"] == "ok"
    assert got["folder.png"]["error"].endswith("is a folder, expected a file")
    assert got["loop.png"]["error"].endswith("symlink loop")
    assert "broken symlink" in got["dangling.png"]["error"]
    assert got["missing.png"]["error"].endswith("file not found")


def test_input_dir_lists_folders_and_loops_as_error_rows(image_run, tmp_path):
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    img = min(Path(image_run["root"]).rglob("*.png"))
    (d / "sub" / "good.png").write_bytes(img.read_bytes())
    _bad_entries(d)
    out = tmp_path / "r.csv"
    r = cli("score", image_run["bundle"], "-i", d, "--out", out, "-q")
    assert r.returncode == 0, r.stderr[-2000:]
    got = {x["case"]: x for x in rows(out)}
    assert set(got) == {"sub/good.png", "folder.png", "loop.png", "dangling.png"}
    assert got["sub/good.png"]["status"] == "ok"
    assert "is a folder, expected a file" in got["folder.png"]["error"]
    assert "symlink loop" in got["loop.png"]["error"]


def test_unknown_engine_touches_nothing(image_run, tmp_path):
    engine = "nope"
    man, _ = small_manifest(image_run, tmp_path)
    out = tmp_path / "r.csv"
    out.write_text("keep me\n")
    msg = one_line_error(cli("score", image_run["bundle"], "-m", man, "--out", out, "--overwrite", "--engine", engine))
    assert "unknown engine" in msg and out.read_text() == "keep me\n"
    with pytest.raises(Exception, match="unknown engine"):
        score(image_run["bundle"], [], out, overwrite=True, engine=engine, progress=False)
    assert out.read_text() == "keep me\n"


# ------------------------------------------------------------ a resume never keeps another input's row
def test_resume_refuses_rows_of_other_files_or_other_options(image_run, tmp_path):
    """siteA/x.png then siteB/x.png (another image, same case id) with --resume: siteB got siteA's
    answer ("skipped"); a resume with other --opt values mixed two settings in one file."""
    from medtransfer.shared.runtime.score import LEGACY_COLUMNS, input_id, score
    from medtransfer.shared.utils.errors import MedTransferError

    imgs = sorted(Path(image_run["root"]).rglob("*.png"))[:4]
    for site, pick in (("siteA", imgs[:2]), ("siteB", imgs[2:])):
        (tmp_path / site).mkdir()
        for k, p in enumerate(pick):
            (tmp_path / site / f"x{k}.png").write_bytes(p.read_bytes())
    out = tmp_path / "r.csv"

    def cases(site):
        return [Case(f"x{k}.png", str(tmp_path / site / f"x{k}.png"), {}) for k in range(2)]

    assert score(image_run["bundle"], cases("siteA"), out, progress=False)["ok"] == 2
    got = rows(out)
    assert [r["input_id"] for r in got] == [input_id(c) for c in cases("siteA")]
    assert all(str(tmp_path) not in r["input_id"] for r in got)  # a digest, not the path
    before = out.read_bytes()
    with pytest.raises(MedTransferError, match="case 'x0.png' was scored from another input"):
        score(image_run["bundle"], cases("siteB"), out, resume=True, progress=False)
    with pytest.raises(MedTransferError, match="other --opt values"):
        score(image_run["bundle"], cases("siteA"), out, resume=True, progress=False, options={"plot": True})
    assert out.read_bytes() == before
    assert score(image_run["bundle"], cases("siteA"), out, resume=True, progress=False)["skipped"] == 2
    # the same file with another prompt column (a videoseg mask or box) is another case
    other = [Case(c.case_id, c.path, {"note": "other prompt"}) for c in cases("siteA")]
    assert input_id(other[0]) != input_id(cases("siteA")[0])
    with pytest.raises(MedTransferError, match="was scored from another input"):
        score(image_run["bundle"], other, out, resume=True, progress=False)
    # a results file of an earlier version (no identity columns) still resumes, in its own columns
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LEGACY_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerow(got[0])
    s = score(image_run["bundle"], cases("siteA"), out, resume=True, progress=False)
    assert s["skipped"] == 1 and s["ok"] == 1
    with open(out, newline="") as f:
        assert next(csv.reader(f)) == LEGACY_COLUMNS and len(rows(out)) == 2


def test_a_second_job_writing_artefacts_into_one_folder_is_refused(image_run, tmp_path):
    """Two jobs' case1/masks.npz overwrote each other in one -o / --opt out_dir (rows then pointed at
    the other job's masks): the artefact folder is one job's while it runs."""
    from lockutil import lock_held_elsewhere

    from medtransfer.shared.runtime.score import score
    from medtransfer.shared.utils.errors import MedTransferError

    img = min(Path(image_run["root"]).rglob("*.png"))
    arts = tmp_path / "arts"
    arts.mkdir()
    with lock_held_elsewhere(arts / ".artefacts.lock", arts):
        with pytest.raises(MedTransferError, match="already being written by another job"):
            score(
                image_run["bundle"],
                [Case("a", str(img), {})],
                tmp_path / "r.csv",
                progress=False,
                options={"out_dir": str(arts)},
            )
        msg = one_line_error(cli("predict", image_run["bundle"], img, "-o", arts))
        assert "already being written by another job" in msg
    s = score(
        image_run["bundle"],
        [Case("a", str(img), {})],
        tmp_path / "r2.csv",
        progress=False,
        options={"out_dir": str(arts)},
    )
    assert s["ok"] == 1 and not (arts / ".artefacts.lock").exists()  # released, the file removed
