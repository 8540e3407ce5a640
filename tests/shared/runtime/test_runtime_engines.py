"""The shared map engine: one result per item, errors as results, init once per worker, chunks,
crashes isolated, thread budget, lazy consumption; Ray gives what local gives."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from medtransfer.shared.runtime.engines import (
    WorkerDied,
    default_chunksize,
    guided_chunk,
    ray_chunksize,
    run_map,
    worker_threads,
)

_INITS = 0


def _init() -> dict:
    global _INITS
    _INITS += 1
    return {"pid": os.getpid(), "inits": _INITS, "threads": os.environ.get("MEDTRANSFER_THREADS", "")}


def _square(state: dict, x: int) -> tuple:
    if x % 7 == 3:
        raise ValueError(f"bad item {x}")
    return state["pid"], state["inits"], x * x, state["threads"]


class _Unpicklable(Exception):
    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.handle = lambda: None  # a lambda attribute cannot be pickled

    def __reduce__(self):
        raise TypeError("cannot pickle")


def _raise_unpicklable(state: dict, x: int) -> int:
    raise _Unpicklable(f"odd {x}")


def _crash_on_5(state: dict, x: int) -> int:
    if x == 5:
        os._exit(3)  # the worker process dies mid-item
    return x + 1


def _failing_init() -> dict:
    raise RuntimeError("no model here")


def _check(results: list, n: int) -> None:
    assert sorted(i for i, _ in results) == list(range(n))  # every item exactly once
    for i, r in results:
        if i % 7 == 3:
            assert isinstance(r, ValueError) and str(r) == f"bad item {i}"
        else:
            assert r[2] == i * i


@pytest.mark.parametrize("workers", [1, 2])
def test_every_item_once_errors_are_results_init_once_per_worker(workers):
    run = run_map(_init, _square, range(30), workers=workers, chunksize=3)
    res = list(run)
    _check(res, 30)
    ok = [r for _, r in res if not isinstance(r, BaseException)]
    assert len({(r[0], r[1]) for r in ok}) == len({r[0] for r in ok})  # one init per worker process
    assert len({r[0] for r in ok}) <= workers
    assert (os.getpid() in {r[0] for r in ok}) == (workers == 1)
    assert run.stats["items"] == 30 and run.stats["workers"] == workers


def test_ordered_yields_input_order_and_chunks_stay_on_one_worker():
    res = list(run_map(_init, _square, list(range(40)), workers=2, chunksize=4, ordered=True))
    assert [i for i, _ in res] == list(range(40))
    _check(res, 40)
    by_chunk: dict[int, set] = {}
    for i, r in res:
        if not isinstance(r, BaseException):
            by_chunk.setdefault(i // 4, set()).add(r[0])
    assert all(len(p) == 1 for p in by_chunk.values())  # a chunk is one task on one worker


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_start_methods_give_the_same_results_and_cap_threads(method):
    run = run_map(_init, _square, range(14), workers=2, start_method=method)
    res = list(run)
    _check(res, 14)
    assert run.stats["start_method"] == method
    want = str(worker_threads(2))
    assert {r[3] for _, r in res if not isinstance(r, BaseException)} == {want}
    assert run.stats["threads_per_worker"] * 2 <= max(2, os.cpu_count() or 1)


def test_unpicklable_exception_comes_back_as_one_line():
    res = list(run_map(_init, _raise_unpicklable, range(3), workers=2))
    assert len(res) == 3
    for i, r in res:
        assert isinstance(r, RuntimeError) and str(r) == f"_Unpicklable: odd {i}"


def test_a_crashing_item_fails_alone():
    res = dict(run_map(_init, _crash_on_5, range(12), workers=2, chunksize=2))
    assert sorted(res) == list(range(12))
    assert isinstance(res[5], WorkerDied)
    assert {i: r for i, r in res.items() if i != 5} == {i: i + 1 for i in range(12) if i != 5}


def test_a_worker_that_dies_before_the_next_submit_loses_nothing():
    """The pool can break between two submits (CI saw it): the chunk that could not go out runs
    again in the fresh pool like those in flight, and no item is lost."""

    def items():
        for i in range(10):
            if i == 6:
                time.sleep(1.5)  # item 5's worker dies meanwhile: the next submit finds the pool broken
            yield i

    res = dict(run_map(_init, _crash_on_5, items(), workers=2, chunksize=1))
    assert sorted(res) == list(range(10)) and isinstance(res[5], WorkerDied)
    assert {i: r for i, r in res.items() if i != 5} == {i: i + 1 for i in range(10) if i != 5}


@pytest.mark.parametrize("workers", [1, 2])
def test_init_failure_is_raised_before_any_item(workers):
    pulled = []

    def items():
        for i in range(5):
            pulled.append(i)
            yield i

    with pytest.raises(RuntimeError, match="no model here"):
        run_map(_failing_init, _square, items(), workers=workers)
    assert pulled == []


def test_items_are_consumed_lazily():
    pulled = []

    def items():
        for i in range(1000):
            pulled.append(i)
            yield i

    run = run_map(_init, _square, items(), workers=2, chunksize=2)
    first = next(run)
    assert first[0] < 8
    assert len(pulled) <= 2 * 2 * 2 + 2  # at most 2 chunks per worker in flight (+ the one being cut)
    run.close()
    assert len(pulled) < 1000


def test_default_chunksize():
    assert default_chunksize(None, 2) == 1
    assert default_chunksize(10, 2) == 1
    assert default_chunksize(200, 2) == 8 and default_chunksize(48, 2) == 3


def test_ray_chunks_are_guided_big_first_small_last():
    assert ray_chunksize(None, 2) == 1 and ray_chunksize(10, 2) == 1
    assert ray_chunksize(5000, 2) == 32 and ray_chunksize(320, 2) == 20
    left, sizes = 1000, []
    while left:
        sizes.append(guided_chunk(left, 2, ray_chunksize(1000, 2)))
        left -= sizes[-1]
    assert sum(sizes) == 1000 and sizes[0] == 32 and sizes[-1] == 1
    assert sizes == sorted(sizes, reverse=True)  # never grows: the tail is cut fine
    assert len(sizes) < 1000 // 8  # fewer tasks than fixed chunks of 8


def test_renice_reaches_every_thread(tmp_path):
    code = textwrap.dedent("""
        import json, os, threading, time
        from medtransfer.shared.runtime.engines import _renice, niceness
        stop = threading.Event()
        t = threading.Thread(target=stop.wait); t.start()  # a thread that exists before the call
        want = niceness() + 3
        got = _renice(want)
        tids = os.listdir("/proc/self/task")
        nices = sorted({os.getpriority(os.PRIO_PROCESS, int(tid)) for tid in tids})
        stop.set(); t.join()
        print(json.dumps({"want": want, "got": got, "threads": len(tids), "nices": nices}))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["got"] == got["want"] and got["threads"] >= 2 and got["nices"] == [got["want"]]


def test_unknown_engine_is_one_line():
    from medtransfer.shared.utils.errors import MedTransferError

    with pytest.raises(MedTransferError, match="unknown engine 'spark'"):
        run_map(_init, _square, [1], engine="spark")


def test_fork_when_safe_and_no_torch(tmp_path):
    code = textwrap.dedent("""
        import json, sys
        from medtransfer.shared.runtime.engines import fork_is_safe, run_map
        run = run_map(dict, lambda s, x: x, range(3), workers=2)
        assert sorted(run) == [(0, 0), (1, 1), (2, 2)]
        safe_before = fork_is_safe()  # the pool is gone: safe again for the next job
        import torch  # noqa: F401
        print(json.dumps({"method": run.stats["start_method"], "safe": safe_before, "after": fork_is_safe()}))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got == {"method": "fork", "safe": True, "after": False}


@pytest.mark.slow
def test_ray_gives_what_local_gives():
    ray = pytest.importorskip("ray")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import a test file
    local = dict(run_map(_init, _square, range(21), workers=2, chunksize=2))
    run = run_map(_init, _square, range(21), engine="ray", workers=2, chunksize=2, ordered=True)
    ray_res = list(run)
    assert [i for i, _ in ray_res] == list(range(21))
    _check(ray_res, 21)
    assert {i: r[2] for i, r in ray_res if not isinstance(r, BaseException)} == {
        i: r[2] for i, r in local.items() if not isinstance(r, BaseException)
    }
    states = {(r[0], r[1]) for _, r in ray_res if not isinstance(r, BaseException)}
    assert len(states) == len({pid for pid, _ in states}) <= 2  # one init per actor, actors reused
    assert run.stats["startup_s"] >= run.stats.get("ray_actors_s", 0) > 0
    assert run.stats["chunking"] == "fixed" and run.stats["chunksize"] == 2
    assert run.stats["actor_nice"] == run.stats["driver_nice"]  # not Ray's 15 steps nicer
    guided = run_map(_init, _square, range(300), engine="ray", workers=2)
    _check(list(guided), 300)
    assert guided.stats["chunking"] == "guided" and guided.stats["chunksize"] == ray_chunksize(300, 2)
    with pytest.raises(RuntimeError, match="no model here"):
        run_map(_failing_init, _square, range(3), engine="ray", workers=1)


def test_a_later_ray_job_of_more_workers_gets_them(monkeypatch, capsys):
    """A script's first Ray job had 1 worker (Ray started here with 1 CPU), its next asked for 2: the
    second actor waited for a CPU that Ray would never have (hung; CI met it when the 1-worker test
    ran first).  Ray is started again for the larger job; a Ray that a job of this process is still
    using is not, and the job takes the CPUs there are."""
    ray = pytest.importorskip("ray")
    from medtransfer.shared.runtime import engines as E

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    E.shutdown_ray()
    assert sorted(dict(run_map(_init, _square, [0, 1], engine="ray", workers=1))) == [0, 1]
    two = run_map(_init, _square, range(4), engine="ray", workers=2, chunksize=1)
    assert two.stats["workers"] == 2 and two.stats["ray_restarted_for_workers"] == 1
    assert sorted(dict(two)) == [0, 1, 2, 3] and E._RAY_JOBS == 0
    monkeypatch.setattr(E, "_RAY_JOBS", 1)  # another job of this process in progress
    three = run_map(_init, _square, range(3), engine="ray", workers=3, chunksize=1)
    assert three.stats["workers"] == 2 and three.stats["workers_asked"] == 3
    assert sorted(dict(three)) == [0, 1, 2]
    assert "3 workers asked, this process's Ray has 2 CPUs: using 2" in capsys.readouterr().err


@pytest.mark.parametrize("workers", [1, 2])
def test_ray_an_item_that_kills_its_actor_fails_alone(workers):
    """As with local workers: the item whose actor dies gets WorkerDied, the other items of its chunk
    (and of the other chunk in flight on that actor) run again and give their results (the whole
    chunk were errors before)."""
    ray = pytest.importorskip("ray")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    run = run_map(_init, _crash_on_5, range(20), engine="ray", workers=workers, chunksize=4)
    res = dict(run)
    assert sorted(res) == list(range(20)) and isinstance(res[5], WorkerDied), res
    assert {i: r for i, r in res.items() if i != 5} == {i: i + 1 for i in range(20) if i != 5}


# ------------------------------------------------------------------- score and its bench on the engine
def test_score_reports_startup_apart_and_workers_give_the_same_rows(image_run, tmp_path):
    import csv
    from pathlib import Path

    from medtransfer.shared.runtime.score import Case, score

    imgs = sorted(Path(image_run["root"]).rglob("*.png"))[:7]
    cases = [Case(p.name, str(p), {}) for p in imgs] + [Case("gone.png", str(tmp_path / "gone.png"), {})]
    one = score(image_run["bundle"], cases, tmp_path / "a.csv", progress=False)
    two = score(image_run["bundle"], cases, tmp_path / "b.csv", workers=2, chunksize=3, progress=False)
    assert one["engine_stats"]["start_method"] == "inline"
    assert two["engine_stats"]["start_method"] in ("fork", "forkserver") and two["engine_stats"]["chunksize"] == 3
    assert two["startup_s"] > 0 and two["work_s"] > 0 and two["engine_stats"]["items"] == 8
    assert (one["ok"], one["error"]) == (two["ok"], two["error"]) == (7, 1)

    def table(p):
        with open(p, newline="") as f:
            return sorted((r["case"], r["status"], r["error"], r["result"]) for r in csv.DictReader(f))

    assert table(tmp_path / "a.csv") == table(tmp_path / "b.csv")


def test_score_bench_runs_each_setup_on_distinct_case_files(image_run, tmp_path):
    from pathlib import Path

    from medtransfer.shared.bench import score_bench

    imgs = sorted(Path(image_run["root"]).rglob("*.png"))[:3]
    res = score_bench(
        Path(image_run["bundle"]),
        imgs,
        sizes=(7,),
        setups=("local:1", "local:2"),
        work_dir=tmp_path / "w",
        out_json=tmp_path / "b.json",
        progress=False,
    )
    runs = res["runs"]["7"]
    for setup in ("local:1", "local:2"):
        r = runs[setup]
        assert r["ok"] == 7 and r["error"] == 0, r  # 7 distinct files although only 3 samples
        assert r["peak_rss_mib"] > 0 and r["cpu_s"] > 0 and len(r["loadavg"]) == 2
        assert r["total_cpu_s"] >= r["cpu_self_s"] > 0  # the job process and every worker under it
    assert runs["local:2"]["engine_stats"]["start_method"] == "fork"  # a fresh process without torch
    ratios = res["ratios"]["7"]
    assert ratios["local_2w_over_1w"] == round(runs["local:1"]["seconds"] / runs["local:2"]["seconds"], 2)
    assert json.loads((tmp_path / "b.json").read_text())["runs"]["7"]["local:1"]["ok"] == 7


def test_rays_worker_death_message_goes_to_stderr_not_the_jobs_stdout():
    """Ray's driver printed "(raylet) A worker died ..." to stdout from a background thread (also
    after the job's own last line), breaking scripts that read a job's stdout; now it goes to
    stderr, and stdout holds only what the job prints."""
    pytest.importorskip("ray")
    code = textwrap.dedent(
        """
        import os
        from medtransfer.shared.runtime.engines import end_ray_driver, run_map

        def init():
            return {}

        def fn(state, x):
            if x == 5:
                os._exit(3)
            return x + 1

        res = dict(run_map(init, fn, range(12), engine="ray", workers=2, chunksize=2))
        print("RESULT", sorted(res), type(res[5]).__name__, flush=True)
        end_ray_driver(0)
        """
    )
    env = {**os.environ, "RAY_ADDRESS": "local"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines() == [f"RESULT {list(range(12))} WorkerDied"], r.stdout[-2000:]


def test_score_bench_ratios_name_each_ray_setup():
    from medtransfer.shared.bench import _ratios

    runs = {
        "local:1": {"seconds": 8.0, "work_s": 7.0, "total_cpu_s": 7.5},
        "local:2": {"seconds": 4.0, "work_s": 3.5, "total_cpu_s": 8.0},
        "ray:2": {"seconds": 10.0, "work_s": 4.0, "total_cpu_s": 9.0, "startup_s": 6.0,
                  "engine_stats": {"ray_address": "local"}},
        "ray-cluster:2": {"seconds": 5.0, "work_s": 3.5, "total_cpu_s": 10.0, "startup_s": 1.5,
                          "engine_stats": {"ray_address": "127.0.0.1:6379"}},
    }  # fmt: skip
    out = _ratios(runs)
    assert out["local_2w_over_1w"] == 2.0 and out["local_2w_over_1w_work"] == 2.0
    assert out["ray_over_local_2w"] == 2.5 and out["ray_over_local_2w_work"] == round(4.0 / 3.5, 2)
    assert out["ray_cluster_over_local_2w"] == 1.25 and out["ray_cluster_over_local_2w_work"] == 1.0
    assert out["ray_cluster_over_local_2w_cpu"] == 1.25 and out["ray_over_local_1w"] == 1.25
    assert out["ray_startup_s"] == 6.0 and out["ray_cluster_startup_s"] == 1.5
    assert out["ray_address"] == "local" and out["ray_cluster_address"] == "127.0.0.1:6379"  # which Ray each used


def test_score_bench_defaults_show_a_self_started_ray_and_a_running_clusters_first_and_next_job(monkeypatch):
    import importlib.util

    from medtransfer.shared.bench import check_score_setups, default_score_setups

    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else find(name, *a))
    assert default_score_setups(3) == ("local:1", "local:3")  # no Ray installed: no Ray setups
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "ray" else find(name, *a))
    setups = default_score_setups(2)
    assert setups == ("local:1", "local:2", "ray:2", "ray-cluster:2", "ray-cluster:2", "ray-cluster-other:2")
    check_score_setups(setups)  # the defaults pass their own check


def test_score_bench_runs_another_bundle_on_the_clusters_warm_actors(image_run, tmp_path):
    """``ray-cluster-other``: a copy of the bundle (another path, so another pool key) scored on the
    cluster after the first job: the warm actor opens it (no new actor), the rows are the same."""
    pytest.importorskip("ray")
    from medtransfer.shared.bench import score_bench

    imgs = sorted(Path(image_run["root"]).rglob("*.png"))[:3]
    res = score_bench(Path(image_run["bundle"]), imgs, sizes=(4,), setups=("ray-cluster:1", "ray-cluster-other:1"),
                      work_dir=tmp_path / "w", progress=False)  # fmt: skip
    first, other = (res["runs"]["4"][k] for k in ("ray-cluster:1", "ray-cluster-other:1"))
    assert first["ok"] == other["ok"] == 4, res
    assert first["engine_stats"]["ray_actors_reused"] == 0
    assert other["engine_stats"]["ray_actors_reused"] == 1 and other["engine_stats"]["ray_states_reused"] == 0

    def answers(out: str) -> dict:
        with open(out, newline="") as f:
            return {r["case"]: (r["status"], r["result"], r["bundle_sha256"]) for r in csv.DictReader(f)}

    assert answers(other["out"]) == answers(first["out"]) and len(answers(first["out"])) == 4
    assert "ray_cluster_other_over_local_2w" not in res["ratios"]["4"]  # no local setup to compare with


@pytest.mark.parametrize(
    "args, says",
    [
        (["--score-cases", "1x"], "--score-cases '1x'"),
        (["--score-cases", "0"], "case count 0"),
        (["--score-cases", "10", "--score-setups", "local:1,ray-clustr:2"], "setup 'ray-clustr:2'"),
        (["--score-cases", "10", "--score-setups", "local:0"], "setup 'local:0'"),
    ],
)
def test_bench_refuses_bad_score_setups_in_one_line_before_running(args, says):
    p = subprocess.run(
        [sys.executable, "-m", "medtransfer.shared.cli.main", "bench", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 2 and says in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert p.stdout == ""  # refused before any benchmark ran


@pytest.mark.slow
def test_score_joins_a_running_ray_cluster_which_the_bench_stops(image_run, tmp_path):
    pytest.importorskip("ray")
    import psutil

    from medtransfer.shared.bench import RayCluster, make_case_set, score_run

    imgs = sorted(Path(image_run["root"]).rglob("*.png"))[:3]
    man = make_case_set(imgs, 5, tmp_path / "cases")
    folder = Path(tempfile.mkdtemp(prefix="rct", dir="/tmp"))  # Ray's socket paths must stay short
    cluster, pids = None, []
    try:
        cluster = RayCluster(1, folder)
        pids = [p.pid for p in cluster.processes()]
        assert len(pids) >= 2  # raylet, GCS, ...
        assert cluster.first_connect_s is not None and cluster.first_connect_s > 0  # the probe connected
        r = score_run(Path(image_run["bundle"]), man, tmp_path / "o.csv", "ray", 1, cluster=cluster)
        assert r["ok"] == 5 and r["engine_stats"]["ray_address"] == cluster.address, r
        assert r["engine_stats"]["actor_nice"] == r["engine_stats"]["driver_nice"]
        assert r["engine_stats"]["actor_cpu_s"] > 0 and r["total_cpu_s"] > r["cpu_s"]  # the actor's CPU counted
        # the command line on the cluster: it ends without Ray's driver shutdown (end_ray_driver), with
        # its status, its summary on stdout and every row written; the warm pool the job above left
        # (detached actors) serves it, and a failing command still exits 2 with one line
        cmd = [sys.executable, "-m", "medtransfer.shared.cli.main", "score", str(image_run["bundle"]), "-m", str(man)]
        p = subprocess.run(
            [*cmd, "-o", str(tmp_path / "cli.csv"), "--engine", "ray", "-q"],
            env=cluster.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert p.returncode == 0, p.stderr[-2000:]
        summary = json.loads(p.stdout.strip().splitlines()[-1])
        assert summary["ok"] == 5 and summary["engine_stats"]["ray_actors_reused"] == 1, summary
        assert (tmp_path / "cli.csv").read_text().count("\n") == (tmp_path / "o.csv").read_text().count("\n") == 6
        p = subprocess.run([*cmd, "-o", str(tmp_path / "cli.csv"), "--engine", "ray", "-q"], env=cluster.env,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
        assert p.returncode == 2 and "exists" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
        # relative paths are the user's: the cluster's actors started in another folder, and every
        # case of a relative --input-dir was "file not found" (and a relative bundle failed to open)
        (tmp_path / "rel").mkdir()
        for i, img in enumerate(imgs[:2]):
            shutil.copy(img, tmp_path / "rel" / f"c{i}.png")
        shutil.copytree(image_run["bundle"], tmp_path / "bundle_rel")
        rel = [sys.executable, "-m", "medtransfer.shared.cli.main", "score", "bundle_rel", "--input-dir", "rel"]
        p = subprocess.run([*rel, "-o", "rel.csv", "--engine", "ray", "-q"], env=cluster.env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
        assert p.returncode == 0, p.stderr[-2000:]
        summary = json.loads(p.stdout.strip().splitlines()[-1])
        assert summary["ok"] == 2 and summary["error"] == 0, summary
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


@pytest.mark.slow
def test_running_cluster_keeps_a_warm_pool_that_ends_when_idle(image_run, tmp_path, monkeypatch):
    """Jobs on a running cluster reuse the previous job's actors (bundle already open) while they
    are warm; an idle pool ends itself after MEDTRANSFER_RAY_KEEP_S; a job without a pool gets
    the CPUs of an idle one."""
    pytest.importorskip("ray")
    from medtransfer.shared.bench import RayCluster, make_case_set, score_run
    from medtransfer.shared.runtime.engines import pool_name, ray_keep_s
    from medtransfer.shared.utils.errors import MedTransferError

    monkeypatch.setenv("MEDTRANSFER_RAY_KEEP_S", "nope")
    with pytest.raises(MedTransferError, match="MEDTRANSFER_RAY_KEEP_S"):
        ray_keep_s()
    monkeypatch.delenv("MEDTRANSFER_RAY_KEEP_S")
    assert ray_keep_s() == 120.0
    assert pool_name(1, 0, 0) != pool_name(2, 0, 0) != pool_name(1, 5, 0) != pool_name(1, 0, 1)

    imgs = sorted(Path(image_run["root"]).rglob("*.png"))[:3]
    man = make_case_set(imgs, 6, tmp_path / "cases")
    folder = Path(tempfile.mkdtemp(prefix="rcw", dir="/tmp"))  # Ray's socket paths must stay short
    cluster = None
    try:
        cluster = RayCluster(1, folder)
        cluster.env["MEDTRANSFER_RAY_KEEP_S"] = "3"

        def job(name: str) -> dict:
            r = score_run(Path(image_run["bundle"]), man, tmp_path / f"{name}.csv", "ray", 1, cluster=cluster)
            assert r.get("ok") == 6, r
            return r["engine_stats"]

        first, second = job("a"), job("b")
        assert first["ray_actors_reused"] == 0 and second["ray_actors_reused"] == 1
        assert first["ray_states_reused"] == 0 and second["ray_states_reused"] == 1
        assert first["ray_pool"] == second["ray_pool"] == {"keep_s": 3.0}
        assert second["ray_actors_s"] < first["ray_actors_s"]  # no worker start, no bundle load
        assert (tmp_path / "a.csv").read_text().count("\n") == (tmp_path / "b.csv").read_text().count("\n")
        time.sleep(8)  # idle past keep_s: the pool ended itself (and freed its CPU)
        cluster.env["MEDTRANSFER_RAY_KEEP_S"] = "600"
        assert job("c")["ray_actors_reused"] == 0
        # no pool: a fresh actor, killed at the end; the idle pool of job c (kept 600 s) gives the
        # cluster's one CPU back to it
        cluster.env["MEDTRANSFER_RAY_KEEP_S"] = "0"
        d = job("d")  # no wait: job c gave its lease back, so its pool ends when asked
        assert d["ray_pool"] is None and d["ray_pools_retired"] == 1 and job("e")["ray_actors_reused"] == 0
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


def test_ray_is_disconnected_at_exit_before_rays_own_hook(monkeypatch):
    """Ray's own exit hook sleeps 0.5 s for worker logs we never print; ours (registered later,
    so run first) disconnects without it, and only when Ray is still up."""
    import atexit
    import types

    from medtransfer.shared.runtime import engines

    calls: list[str] = []
    state = {"up": True}
    fake = types.SimpleNamespace(
        is_initialized=lambda: state["up"], shutdown=lambda **kw: calls.append(f"shutdown{kw or ''}")
    )
    hooks: list = []
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(atexit, "register", lambda fn, *a, **kw: hooks.append(fn))
    engines._disconnect_at_exit()
    assert len(hooks) == 1
    hooks[0]()
    assert calls == ["shutdown"]  # plain shutdown: not Ray's _exiting_interpreter path
    state["up"] = False
    hooks[0]()
    assert calls == ["shutdown"]  # already down (e.g. shutdown_ray ran): nothing more


def test_a_driver_joined_to_a_cluster_ends_without_rays_shutdown(monkeypatch):
    """end_ray_driver: on a joined cluster, every other exit handler runs, Ray's shutdown hooks are
    dropped and the process ends with the command's status; everywhere else it returns."""
    import atexit
    import threading
    import types

    from medtransfer.shared.runtime import engines

    calls: list = []
    state = {"up": True}
    fake = types.SimpleNamespace(is_initialized=lambda: state["up"], shutdown=lambda **kw: calls.append("shutdown"))

    class Ended(Exception):
        pass

    def os_exit(status: int) -> None:
        calls.append(("exit", status))
        raise Ended

    monkeypatch.setattr(engines.os, "_exit", os_exit)
    monkeypatch.setattr(atexit, "_run_exitfuncs", lambda: calls.append("handlers"))
    monkeypatch.setattr(atexit, "unregister", lambda fn: calls.append(("unregister", fn)))
    monkeypatch.delenv("MEDTRANSFER_RAY_FAST_EXIT", raising=False)

    engines.end_ray_driver(0)  # no Ray imported: nothing
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(engines, "_RAY_STARTED_HERE", True)
    engines.end_ray_driver(0)  # the Ray we started must be stopped properly
    monkeypatch.setattr(engines, "_RAY_STARTED_HERE", False)
    state["up"] = False
    engines.end_ray_driver(0)  # not connected
    state["up"] = True
    monkeypatch.setenv("MEDTRANSFER_RAY_FAST_EXIT", "off")
    engines.end_ray_driver(0)  # turned off
    monkeypatch.delenv("MEDTRANSFER_RAY_FAST_EXIT")
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, daemon=False)
    t.start()
    try:
        engines.end_ray_driver(0)  # a non-daemon thread still works: the normal exit waits for it
    finally:
        stop.set()
        t.join()
    assert calls == []

    with pytest.raises(Ended):
        engines.end_ray_driver(3)
    assert calls == [("unregister", fake.shutdown), ("unregister", engines._disconnect_ray), "handlers", ("exit", 3)]
    calls.clear()
    with pytest.raises(Ended):
        engines.end_ray_driver(None)
    assert calls[-1] == ("exit", 0)
    calls.clear()
    with pytest.raises(Ended):
        engines.end_ray_driver("a message")  # as sys.exit("a message"): printed, status 1
    assert calls[-1] == ("exit", 1)


_POOL_JOB = """
import functools, json, os, sys, time
from medtransfer.shared.runtime.engines import end_ray_driver, run_map

def opened(tag):
    if tag == "bad":
        raise RuntimeError("no model in bundle bad")
    return {"tag": tag, "pid": os.getpid(), "opened": time.time()}

def answer(state, item):
    time.sleep(PAUSE)
    return [state["tag"], item, state["pid"], state["opened"]]

tag, workers = sys.argv[1], int(sys.argv[2])
n, PAUSE = (int(sys.argv[3]), float(sys.argv[4])) if len(sys.argv) > 4 else (4, 0.0)
try:
    run = run_map(functools.partial(opened, tag), answer, range(n), engine="ray", workers=workers, reuse_key=tag)
    rows = [r for _, r in run]
    run.close()
    print(json.dumps({"rows": rows, "stats": run.stats}))
except RuntimeError as e:
    print(json.dumps({"error": str(e)}))
end_ray_driver(0)
"""


def test_one_warm_pool_serves_every_bundle_back_to_back(tmp_path):
    """Jobs of different bundles (keys) on a running cluster share one warm pool: the next bundle's
    job opens its state in the warm actor at once (it waited for the previous pool to expire,
    120 s, when pools were per bundle); each job's items see its own state; an actor keeps two
    states (the least recently used beyond is reopened when needed); a failing init fails its job
    and leaves the pool to the others; more workers than the cluster has CPUs is said and capped
    (the job hung, its extra actors never placed)."""
    pytest.importorskip("ray")
    from medtransfer.shared.bench import RayCluster
    from medtransfer.shared.runtime.engines import POOL_STATES

    assert POOL_STATES == 2
    script = tmp_path / "job.py"
    script.write_text(_POOL_JOB)
    folder = Path(tempfile.mkdtemp(prefix="rcp", dir="/tmp"))  # Ray's socket paths must stay short
    cluster = None
    try:
        cluster = RayCluster(1, folder)  # one CPU: a second pool could not start while one is kept
        cluster.env["MEDTRANSFER_RAY_KEEP_S"] = "600"

        def job(tag: str, workers: int = 1) -> dict:
            p = subprocess.run([sys.executable, str(script), tag, str(workers)], env=cluster.env, capture_output=True,
                               text=True, timeout=100)  # fmt: skip
            assert p.returncode == 0, p.stderr[-2000:]
            out = json.loads(p.stdout.strip().splitlines()[-1])
            out["stderr"] = [ln for ln in p.stderr.splitlines() if "--engine ray" in ln]
            if "rows" in out:
                assert sorted(r[:2] for r in out["rows"]) == [[tag, i] for i in range(4)], out  # its own state
            return out

        a = job("A")
        b = job("B")  # right after A: A's actor is idle for well under a second
        assert b["stats"]["ray_actors_reused"] == 1 and b["stats"]["ray_states_reused"] == 0
        assert b["stats"]["ray_actors_s"] < 30
        pid = a["rows"][0][2]
        assert {r[2] for j in (a, b) for r in j["rows"]} == {pid}  # the same actor process
        a2 = job("A")  # A's state still open beside B's
        assert a2["stats"]["ray_states_reused"] == 1 and a2["rows"][0][3] == a["rows"][0][3]
        c = job("C")  # a third key: B (least recently used) is dropped
        assert c["rows"][0][2] == pid
        b2 = job("B")
        assert b2["stats"]["ray_states_reused"] == 0 and b2["rows"][0][3] > b["rows"][0][3]  # reopened
        assert job("bad") == {"error": "no model in bundle bad", "stderr": []}
        a3 = job("A")  # the pool survived the failed job
        assert a3["rows"][0][2] == pid and a3["stats"]["ray_actors_reused"] == 1 and a3["stderr"] == []
        a4 = job("A", workers=3)
        assert a4["stats"]["workers"] == 1 and a4["stats"]["workers_asked"] == 3 and a4["rows"][0][2] == pid
        assert a4["stderr"] == ["--engine ray: 3 workers asked, the Ray cluster has 1 CPUs: using 1"]
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


def test_a_dead_or_malformed_ray_address_is_one_line_at_once(image_run, tmp_path):
    """RAY_ADDRESS where nothing listens: one line naming it, exit 2, no results file (Ray itself
    retried for minutes with warnings and the job looked hung)."""
    pytest.importorskip("ray")
    import socket

    from medtransfer.shared.runtime.engines import probe_ray_address
    from medtransfer.shared.utils.errors import MedTransferError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    with pytest.raises(MedTransferError, match="not host:port"):
        probe_ray_address("nohost:abc")
    probe_ray_address("auto")  # Ray's own lookups are left to Ray
    for addr, says in ((f"127.0.0.1:{port}", f"no Ray cluster answers at RAY_ADDRESS=127.0.0.1:{port}"),
                       ("ray://", "not host:port")):  # fmt: skip
        t0 = time.perf_counter()
        p = subprocess.run(
            [sys.executable, "-m", "medtransfer.shared.cli.main", "score", str(image_run["bundle"]), "-i",
             str(image_run["root"]), "-o", str(tmp_path / "o.csv"), "--engine", "ray", "-q"],
            env={**os.environ, "RAY_ADDRESS": addr}, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert p.returncode == 2 and says in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert time.perf_counter() - t0 < 60 and not (tmp_path / "o.csv").exists()


def test_a_job_waiting_for_cpus_gets_them_when_the_pool_holding_them_is_released(tmp_path):
    """A job without a pool (MEDTRANSFER_RAY_KEEP_S=0) that starts while another job holds the
    cluster's one CPU in the warm pool: once that job ends, the waiting job asks the now idle pool
    to end and runs (it waited the pool's whole keep time, here 600 s, before)."""
    pytest.importorskip("ray")
    from medtransfer.shared.bench import RayCluster

    script = tmp_path / "job.py"
    script.write_text(_POOL_JOB)
    folder = Path(tempfile.mkdtemp(prefix="rcq", dir="/tmp"))  # Ray's socket paths must stay short
    cluster = None
    try:
        cluster = RayCluster(1, folder)
        env = {**cluster.env, "MEDTRANSFER_RAY_KEEP_S": "600"}
        a = subprocess.Popen([sys.executable, str(script), "A", "1", "40", "0.15"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        time.sleep(4)  # A's job holds the pool's actor (and the CPU) now
        t0 = time.perf_counter()
        b = subprocess.run([sys.executable, str(script), "B", "1"], env={**env, "MEDTRANSFER_RAY_KEEP_S": "0"},
                           capture_output=True, text=True, timeout=120)  # fmt: skip
        waited = time.perf_counter() - t0
        out_a, err_a = a.communicate(timeout=120)
        assert a.returncode == 0 and len(json.loads(out_a.strip().splitlines()[-1])["rows"]) == 40, err_a[-2000:]
        assert b.returncode == 0, b.stderr[-2000:]
        res = json.loads(b.stdout.strip().splitlines()[-1])
        assert sorted(r[:2] for r in res["rows"]) == [["B", i] for i in range(4)]
        assert res["stats"]["ray_pool"] is None and waited < 60, (waited, res["stats"])
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_a_job_without_ray_address_joins_the_cluster_ray_start_left_on_this_machine(image_run, tmp_path, monkeypatch):
    """`ray start --head` once, then `--engine ray` jobs without RAY_ADDRESS join it (one line says
    so; the second job finds the warm pool), as Ray's own `ray.init()` does, token authentication
    (Ray 2.60's default) included; RAY_ADDRESS=local opts out; a record the killed cluster left
    behind starts a private Ray.  An explicit address to a cluster that asks for a token the driver
    does not send is one line at once (Ray retried it 20 s, a warning each second)."""
    pytest.importorskip("ray")
    from medtransfer.shared.bench import RayCluster, make_case_set

    imgs = sorted(Path(image_run["root"]).rglob("*.png"))[:3]
    man = make_case_set(imgs, 4, tmp_path / "cases")
    base = Path(tempfile.mkdtemp(prefix="rtj", dir="/tmp"))  # Ray's socket paths must stay short
    token = os.urandom(16).hex()
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", token)
    cmd = [sys.executable, "-m", "medtransfer.shared.cli.main", "score", str(image_run["bundle"]), "-m", str(man),
           "--engine", "ray", "-q", "--overwrite"]  # fmt: skip
    cluster = None

    def job(out: str, **env: str | None) -> subprocess.CompletedProcess[str]:
        e = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
        return subprocess.run([*cmd, "-o", str(tmp_path / out)], env=e, capture_output=True, text=True, timeout=300)

    try:
        cluster = RayCluster(1, base / "ray")  # records its address where Ray looks with RAY_TMPDIR=base
        port = cluster.address.rpartition(":")[2]
        here = dict(RAY_TMPDIR=str(base), RAY_ADDRESS=None, RAY_AUTH_MODE=None)  # a user's shell: token in a file / env
        summaries = []
        for out in ("a.csv", "b.csv"):
            p = job(out, **here)
            assert p.returncode == 0, p.stderr[-2000:]
            said = p.stderr.strip().splitlines()
            assert len(said) == 1 and "joined the Ray cluster running on this machine" in said[0], p.stderr
            summaries.append(json.loads(p.stdout.strip().splitlines()[-1]))
        assert [s["ok"] for s in summaries] == [4, 4], summaries
        assert all(s["engine_stats"]["ray_address"].endswith(f":{port}") for s in summaries), summaries
        assert summaries[1]["engine_stats"]["ray_actors_reused"] == 1, summaries  # the warm pool
        rows = [
            [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader((tmp_path / f).open())]
            for f in ("a.csv", "b.csv")
        ]  # less the time
        assert rows[0] == rows[1] and len(rows[0]) == 4
        p = job("c.csv", **{**here, "RAY_ADDRESS": "local"})  # opted out: a Ray of its own
        assert p.returncode == 0 and "joined" not in p.stderr, p.stderr[-2000:]
        assert json.loads(p.stdout.strip().splitlines()[-1])["engine_stats"]["ray_address"] == "local"
        t0 = time.perf_counter()
        p = job("d.csv", RAY_ADDRESS=cluster.address, RAY_AUTH_MODE=None, RAY_AUTH_TOKEN=None)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert "asks for its token: set RAY_AUTH_MODE=token" in p.stderr and token not in p.stderr, p.stderr
        assert time.perf_counter() - t0 < 15 and not (tmp_path / "d.csv").exists()
        home = tmp_path / "home"  # a user without the token: not in the environment, no ~/.ray/auth_token
        home.mkdir()
        t0 = time.perf_counter()
        p = job("f.csv", **{**here, "RAY_AUTH_TOKEN": None, "HOME": str(home)})
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert "could not join the Ray cluster running on this machine" in p.stderr, p.stderr
        assert "or RAY_ADDRESS=local" in p.stderr and time.perf_counter() - t0 < 15, p.stderr
        cluster.stop()
        cluster = None
        assert (base / "ray" / "ray_current_cluster").exists()  # the killed cluster's record stays
        p = job("e.csv", **here)  # nothing answers there: a private Ray, nothing said
        assert p.returncode == 0 and p.stderr.strip() == "", p.stderr[-2000:]
        assert json.loads(p.stdout.strip().splitlines()[-1])["engine_stats"]["ray_address"] == "local"
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_a_refused_token_says_what_to_set(monkeypatch):
    """Ray's refusal of a driver without the cluster's token (a chained exception of Ray's) becomes
    what to set; with token mode on it says the token was refused; anything else stays Ray's message."""
    from medtransfer.shared.runtime.engines import _ray_error

    def chained() -> ConnectionError:
        try:
            try:
                raise RuntimeError("Failed to connect to GCS: RPC error: InvalidAuthToken: missing or incorrect")
            except RuntimeError as inner:
                raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379") from inner
        except ConnectionError as e:
            return e

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    assert "set RAY_AUTH_MODE=token" in _ray_error(chained())
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert "refused this driver's token" in _ray_error(chained())
    assert _ray_error(TimeoutError("node did not\n start")) == "TimeoutError: node did not start"


_KILL_FOUND_ACTOR = """
import ray
from medtransfer.shared.runtime import engines

_found = engines._pool_actor
_killed = []

def _ended_as_found(*args, **kw):  # the idle actor ends itself just as this job finds it
    actor = _found(*args, **kw)
    if not _killed:
        ray.get(actor.cpu.remote())  # it is up (the running pool's actor)
        ray.kill(actor, no_restart=True)
        _killed.append(1)
    return actor

engines._pool_actor = _ended_as_found
"""

_FOREIGN_TASK = """
import time, ray
ray.init(log_to_driver=False, configure_logging=False)
t = time.perf_counter()
ray.get(ray.remote(num_cpus=1)(lambda: 1).remote())
print(round(time.perf_counter() - t, 2))
"""


@pytest.mark.slow
def test_an_idle_pool_gives_its_cpus_to_work_that_waits_and_a_job_survives_a_pool_actor_ending(tmp_path):
    """Another user's task waiting for the CPU an idle warm pool holds gets it within seconds (it
    waited the pool's whole keep time, here 600 s); the next job makes the pool again.  A pooled
    actor that ends between a job's lookup and its first call is made again (the job failed)."""
    pytest.importorskip("ray")
    from medtransfer.shared.bench import RayCluster

    (tmp_path / "job.py").write_text(_POOL_JOB)
    (tmp_path / "job_kill.py").write_text(_KILL_FOUND_ACTOR + _POOL_JOB)
    (tmp_path / "foreign.py").write_text(_FOREIGN_TASK)
    folder = Path(tempfile.mkdtemp(prefix="rcy", dir="/tmp"))  # Ray's socket paths must stay short
    cluster = None
    try:
        cluster = RayCluster(1, folder)  # one CPU, which the warm pool's one actor holds between jobs
        env = {**cluster.env, "MEDTRANSFER_RAY_KEEP_S": "600"}

        def run(script: str, *args: str) -> dict:
            p = subprocess.run([sys.executable, str(tmp_path / script), *args], env=env, capture_output=True,
                               text=True, timeout=120)  # fmt: skip
            assert p.returncode == 0, p.stderr[-2000:]
            return json.loads(p.stdout.strip().splitlines()[-1])

        a = run("job.py", "A", "1")
        assert a["stats"]["ray_pool"] == {"keep_s": 600.0} and len(a["rows"]) == 4
        waited = run("foreign.py")
        assert waited < 30, waited
        a2 = run("job.py", "A", "1")
        assert a2["stats"]["ray_actors_reused"] == 0 and a2["rows"][0][2] != a["rows"][0][2]  # a new actor
        a3 = run("job_kill.py", "A", "1")
        assert sorted(r[:2] for r in a3["rows"]) == [["A", i] for i in range(4)], a3
        assert a3["rows"][0][2] != a2["rows"][0][2] and a3["stats"]["ray_actors_reused"] == 0  # made again
        assert run("job.py", "A", "1")["stats"]["ray_actors_reused"] == 1  # and it is the pool now
        # the cluster goes down during a job: the rows given so far stay, the job stops with one
        # line (every item left was an error result, over ~45 s, here 1848 of 3000 EEG cases)
        long = tmp_path / "long.py"
        long.write_text(_POOL_JOB.replace("except RuntimeError as e:", "except Exception as e:").replace(
            "rows = [r for _, r in run]", "rows = []\n    for _, r in run:\n        rows.append(r)\n"
            "        print(json.dumps(r if isinstance(r, list) else repr(r)), flush=True)"))  # fmt: skip
        job = subprocess.Popen([sys.executable, str(long), "A", "1", "400", "0.05"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        time.sleep(6)
        t0 = time.perf_counter()
        cluster.stop()
        cluster = None
        out, err = job.communicate(timeout=120)
        lines = out.strip().splitlines()
        assert "stopped answering during the job" in json.loads(lines[-1])["error"], (lines[-3:], err[-2000:])
        given = [json.loads(ln) for ln in lines[:-1]]
        assert given and all(isinstance(r, list) for r in given), given[-3:]  # rows, no error results
        assert len(given) < 400 and time.perf_counter() - t0 < 60
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


def test_local_workers_are_cut_to_the_items_and_the_cores(capsys: pytest.CaptureFixture) -> None:
    """``--workers 100000`` forked processes until the machine ran out of memory (found by a hostile
    audit: ~200 workers of one `wsi extract` on a 2-core machine, load 200, 24 GB used)."""
    from medtransfer.shared.runtime.engines import cores

    run = run_map(_init, _square, range(6), workers=16)  # (16: safe to run against the old code)
    got = dict(run)
    assert sorted(got) == list(range(6))
    assert run.stats["workers_asked"] == 16
    assert run.stats["workers"] == max(2, min(6, cores()))
    assert len({v[0] for v in got.values() if isinstance(v, tuple)}) <= run.stats["workers"]
    if cores() < 6:
        assert f"--workers 16: this process may use {cores()} cores" in capsys.readouterr().err
    one = run_map(_init, _square, range(1), workers=8)  # one item: two processes, not eight
    assert dict(one)[0][2] == 0 and one.stats["workers"] == 2
    assert one.stats["start_method"] != "inline"  # still apart from this process (a crash is one row)
