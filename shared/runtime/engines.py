"""One engine for mapping a per-item function over many items: in-process, local workers, or Ray.

Every scale-out in the suite (``score --workers N / --engine ray``, EEG preprocessing, WSI
extraction, ...) goes through :func:`run_map`, so each gets the same guarantees::

    from medtransfer.shared.runtime.engines import run_map

    def init() -> Session:                   # heavy state, built ONCE per worker and reused
        return load_bundle(BUNDLE, threads=worker_threads()).session()

    def fn(state: Session, item: str) -> dict:  # one item; may raise
        return {"y": state.run(None, read(item))}

    for i, res in run_map(init, fn, paths, engine="local", workers=2):
        if isinstance(res, BaseException):  # per-item failures come back as results, never lost
            ...
        else:
            ...

API
- ``run_map(init, fn, items, *, engine="local"|"ray", workers=N, chunksize=None, ordered=False,
  progress=False)`` returns a :class:`MapRun`: an iterator of ``(index, result_or_exception)``,
  ``index`` being the item's position in ``items``.  Results stream as chunks finish
  (``ordered=True``: in input order).  Every item yields exactly one pair.
- ``init`` and ``fn`` must be picklable (module-level functions or ``functools.partial`` of them;
  Ray also takes closures).  ``init`` runs once per worker (``workers<=1``: once, in this process)
  when :func:`run_map` is called; an exception in it is raised there (the first worker's), before
  any item runs, and the workers are stopped (in a worker restarted after a crash, it becomes the
  result of that worker's items).  Items are sent to workers as they are:
  send paths / small records, not arrays.
- ``fn`` raising an ``Exception`` makes that item's result the exception (an unpicklable one is
  replaced by ``RuntimeError("Type: message")``).  A worker that dies (segfault, OOM kill) fails only
  its items: the chunks it had in flight are retried one item at a time in a fresh pool, and an
  item that kills a worker again gets a ``WorkerDied`` result.
- ``chunksize``: items per task (``None``: ``len(items) // (workers * 8)`` clamped to 1..8, for Ray
  guided chunks of up to 32; 1 for iterables of unknown length).  At most ``2 * workers`` chunks
  are in flight (backpressure), so an iterable is consumed lazily and memory stays bounded (with
  ``ordered=True``, results that finish ahead of a slow item wait for it in memory).
- ``progress``: ``True`` or a description shows a rich progress bar.
- :func:`worker_threads` is the intra-op thread budget each worker should give ONNX Runtime /
  torch (``cores // workers``, at least 1); the engine also sets ``MEDTRANSFER_THREADS`` (read
  by ``Bundle.session``) and ``OMP_NUM_THREADS`` in each worker, so N workers x threads <= cores.
- ``MapRun.stats``: ``engine``, ``workers``, ``chunksize`` (the largest), ``chunking`` (``fixed`` /
  ``guided``), ``start_method``, ``startup_s`` (pool / Ray start until every worker's ``init`` is
  done, measured apart from the work) and, after the run, ``seconds`` (work only) and ``items``
  (Ray also ``actor_cpu_s``: the actors' CPU, ``init`` included).

Engines
- ``local``, ``workers<=1``: in this process, no pickling, no start-up.
- ``local``, ``workers>1``: a process pool started eagerly when :func:`run_map` is called.  Workers
  start by ``fork`` (cheap: modules already imported, nothing re-read) when that is safe
  (:func:`fork_is_safe`: Linux, no other Python thread, no torch, no started Ray, no live ONNX
  Runtime session in this process); otherwise by ``forkserver`` (``spawn`` off Linux).
  ``preload=("pkg.module", ...)`` imports what the workers need once, before the fork (or in the
  fork server).  ``start_method=`` overrides.
- ``ray``: long-lived actors (one ``init`` each, ``num_cpus=1``) fed chunks, least busy actor
  first, at most two chunks per actor in flight; a finished chunk is replaced before its results
  go to the caller.  Without ``chunksize``, chunks are guided (:func:`ray_chunksize`,
  :func:`guided_chunk`: up to 32 items while much is left, shrinking at the end) and carry no
  Ray task events, so a long job does not pay per-task overhead thousands of times.  Ray starts
  its workers 15 nice steps nicer than the raylet; an actor on the driver's machine takes the
  driver's nice value instead (best effort: raising priority needs ``CAP_SYS_NICE``; without it,
  start the cluster with ``RAY_worker_niceness=0``), so it competes with other work as local
  workers do (``stats["actor_nice"]`` says what it got).  ``ray.init`` (lazily imported) joins
  ``RAY_ADDRESS`` when set (one line at once when nothing listens there:
  :func:`probe_ray_address`), else the cluster ``ray start`` left running on this machine, as
  Ray's own ``ray.init()`` does (said in one line; ``RAY_ADDRESS=local`` opts out), else starts a
  local Ray with ``workers`` CPUs, a small object store
  (``object_store_mb``, default 128 MiB), workers at this process's priority and no metrics
  export.  A Ray this module started stays up for the next call (start-up is paid once per
  process); :func:`shutdown_ray` stops it.
- ``ray`` on a running cluster (either of the two above) with ``reuse_key``: the actors are a warm pool
  that outlives the job (named, detached, in the ``medtransfer`` namespace), one pool per thread
  budget, priority and medtransfer version, shared by every key (``score``: the bundle's verified
  digest, its path, the options).  An actor opens a key's state on the key's first job and keeps
  it (at most :data:`POOL_STATES` keys per actor, the least recently used beyond is dropped and
  reopened when needed), so the next job of the same bundle finds ``init`` done and a job of
  another bundle only opens its bundle, instead of paying worker start-up again.  A job leases
  the actors and gives them back when it ends.  An actor idle for ``MEDTRANSFER_RAY_KEEP_S``
  seconds (default 120; 0 = no pool) ends itself; a failing ``init`` fails its job and leaves
  the pool (its state is not kept); a new job asks idle pools of another budget / priority /
  version to end (at once when no job holds them), so their CPUs are not held from it; an idle
  pooled actor no job holds also ends when other work on the cluster waits for CPUs
  (:meth:`_RayWorker.yield_to_waiting_work`: another user's task waited out the keep time), and a
  job whose pooled actor ended as the job found it makes it again (:data:`POOL_TRIES`).
  An item that kills its actor fails alone (the other items of the chunks it had in flight run
  again one at a time), and a cluster that goes down during a job stops it with one line
  (``_RayBackend.run``).
  ``stats["ray_actors_reused"]`` counts the warm actors found, ``stats["ray_states_reused"]`` those
  that had this key open.  On a running cluster a job asks for no more actors than the cluster
  has CPUs (``stats["workers_asked"]`` and one line on stderr when capped: the extra actors would
  never be placed), and says once on stderr when the cluster has not placed its actors after
  10 s (its CPUs held by other work).  A command-line job that joined a
  cluster ends without Ray's driver shutdown (:func:`end_ray_driver`, ~0.33 s per job).
Torch-free.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from typing import Any, Generic, NamedTuple, TypeVar

from medtransfer.shared.utils.envflags import env_off
from medtransfer.shared.utils.errors import MedTransferError

State = TypeVar("State")
Item = TypeVar("Item")
Result = TypeVar("Result")

ENGINES = ("local", "ray")
_THREADS_ENV = "MEDTRANSFER_THREADS"
_WORKERS_ENV = "MEDTRANSFER_ENGINE_WORKERS"
#: seconds an idle pooled Ray actor stays up on a running cluster (``MEDTRANSFER_RAY_KEEP_S``)
RAY_KEEP_S = 120.0
RAY_NAMESPACE = "medtransfer"


class WorkerDied(RuntimeError):
    """The worker process running an item died (crash, OOM kill) while scoring it."""


def cores() -> int:
    """CPU cores this process may use (its affinity mask, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def worker_threads(workers: int | None = None) -> int:
    """Intra-op threads one worker should use so that ``workers x threads <= cores``.

    Args:
        workers: number of workers; ``None``: inside an engine worker, the engine's own count
            (``MEDTRANSFER_THREADS`` as set by the engine), else 0 (library default).

    Returns:
        Threads per worker (0 = let the library decide, only outside engine workers).
    """
    if workers is None:
        return int(os.environ.get(_THREADS_ENV, "0") or 0)
    return max(1, cores() // max(1, workers))


def default_chunksize(n_items: int | None, workers: int) -> int:
    """Items per task: ``n // (workers * 8)`` clamped to 1..8 (1 when the count is unknown)."""
    if not n_items:
        return 1
    return max(1, min(8, n_items // (max(1, workers) * 8)))


def ray_chunksize(n_items: int | None, workers: int) -> int:
    """Largest chunk a Ray job cuts: ``n // (workers * 8)`` clamped to 1..32.

    A Ray task costs a few milliseconds of driver, actor and raylet work, so Ray gets bigger chunks
    than local workers (:func:`default_chunksize`); :func:`guided_chunk` shrinks them near the end.
    """
    if not n_items:
        return 1
    return max(1, min(32, n_items // (max(1, workers) * 8)))


def guided_chunk(left: int, workers: int, largest: int) -> int:
    """Guided self-scheduling: the next chunk is ``left / (workers * 4)`` (rounded up), at most
    ``largest``, at least 1, so the last chunks are small and the workers finish together."""
    return max(1, min(largest, -(-left // (max(1, workers) * 4))))


def _portable(e: BaseException) -> BaseException:
    """``e`` if it survives pickling, else a RuntimeError carrying its type and message."""
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:  # noqa: BLE001 - any pickling failure
        return RuntimeError(f"{type(e).__name__}: {e}")


def _run_chunk(state: Any, fn: Callable[[Any, Any], Any], chunk: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    out: list[tuple[int, Any]] = []
    for i, item in chunk:
        try:
            out.append((i, fn(state, item)))
        except Exception as e:  # noqa: BLE001 - a failing item is a result, never a crash
            out.append((i, e))
    return out


# ------------------------------------------------------------------------------ local workers
_W_STATE: Any = None
_W_FN: Callable[[Any, Any], Any] | None = None
_W_INIT_ERROR: BaseException | None = None


def _set_thread_env(threads: int) -> None:
    os.environ[_THREADS_ENV] = str(threads)
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[k] = str(threads)


def _limit_threads(threads: int) -> None:
    """This worker's thread budget: env for libraries not started yet (ONNX Runtime sessions read
    ``MEDTRANSFER_THREADS``), threadpoolctl for BLAS pools that already exist (inherited by fork)."""
    _set_thread_env(threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except Exception:  # noqa: BLE001 - optional
        pass


def niceness() -> int:
    """This process's nice value (0 where the OS has none)."""
    try:
        return os.getpriority(os.PRIO_PROCESS, 0)
    except (AttributeError, OSError):
        return 0


def _renice(target: int) -> int:
    """Best effort: give every thread of this process the nice value ``target`` (Linux niceness is
    per thread).  Raising priority needs ``CAP_SYS_NICE`` or a permissive ``RLIMIT_NICE``; where it
    is refused the process keeps its value.

    Returns:
        The nice value in effect afterwards.
    """
    if niceness() == target:
        return target
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, target)
        except (AttributeError, OSError):  # not permitted / thread gone
            pass
    return niceness()


def _worker_init(init: Callable[[], Any], fn: Callable[[Any, Any], Any], threads: int) -> None:
    global _W_STATE, _W_FN, _W_INIT_ERROR
    _limit_threads(threads)
    _W_FN = fn
    try:
        _W_STATE = init()
    except Exception as e:  # noqa: BLE001 - reported as every item's result
        _W_INIT_ERROR = _portable(e)


def _worker_ready() -> tuple[int, BaseException | None]:
    time.sleep(0.02)  # hold this worker a moment so the other ready calls reach the other workers
    return os.getpid(), _W_INIT_ERROR


def _worker_chunk(chunk: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    if _W_INIT_ERROR is not None:
        return [(i, _W_INIT_ERROR) for i, _ in chunk]
    assert _W_FN is not None
    return [(i, r if not isinstance(r, BaseException) else _portable(r)) for i, r in _run_chunk(_W_STATE, _W_FN, chunk)]


def fork_is_safe() -> bool:
    """Whether worker processes may start by ``fork``: Linux, no Python thread besides this one, no
    torch imported, no Ray started and no live ONNX Runtime session here (their threads and state do
    not survive a fork).  Library thread pools that are fork-aware (OpenBLAS) do not count."""
    if not sys.platform.startswith("linux"):
        return False
    if "torch" in sys.modules:
        return False
    ray = sys.modules.get("ray")
    if ray is not None and getattr(ray, "is_initialized", lambda: False)():
        return False
    import threading

    if threading.active_count() > 1:
        return False
    return not _live_ort_sessions()


def _live_ort_sessions() -> bool:
    ort = sys.modules.get("onnxruntime")
    cls = getattr(ort, "InferenceSession", None) if ort is not None else None
    if cls is None:
        return False
    import gc

    return any(isinstance(o, cls) for o in gc.get_objects())


def _preload(modules: Sequence[str]) -> None:
    import importlib

    for m in modules:
        importlib.import_module(m)


def _start_method(requested: str | None, preload: Sequence[str] = ()) -> str:
    if requested:
        if requested == "fork":
            _preload(preload)
        return requested
    if fork_is_safe():
        _preload(preload)  # imported once here, shared (copy-on-write) by every forked worker
        if fork_is_safe():
            return "fork"
    return "forkserver" if sys.platform.startswith("linux") else "spawn"


# ------------------------------------------------------------------------------ the run
def _local_workers(asked: int, n_items: int | None) -> int:
    """Local processes to start for ``asked`` (> 1) workers: no more than the items, nor than the
    cores this process may use (every worker is CPU-bound; ``--workers 100000`` used to fork
    processes until the machine ran out of memory), and never fewer than 2, so that a job that
    asked for workers keeps its items in processes apart from this one (a crash is one item's
    error).  A cut to the cores is said in one line on stderr."""
    use = min(asked, n_items) if n_items else asked
    c = cores()
    cap = max(2, c)
    if use > cap:
        sys.stderr.write(f"--workers {asked}: this process may use {c} cores: using {cap}\n")
        use = cap
    return max(2, use)


class MapRun(Generic[Result]):
    """Iterator of ``(index, result_or_exception)`` from :func:`run_map`; ``stats`` describes the run."""

    def __init__(
        self,
        init: Callable[[], Any],
        fn: Callable[[Any, Any], Any],
        items: Iterable[Any],
        engine: str,
        workers: int,
        chunksize: int | None,
        ordered: bool,
        progress: bool | str,
        start_method: str | None,
        object_store_mb: int,
        preload: Sequence[str] = (),
        reuse_key: str | None = None,
    ) -> None:
        if engine not in ENGINES:
            raise MedTransferError(f"unknown engine '{engine}' (local or ray)")
        self.init, self.fn, self.ordered, self.progress = init, fn, ordered, progress
        self.workers = max(1, int(workers))
        n = len(items) if hasattr(items, "__len__") else None  # type: ignore[arg-type]
        self.total = n
        asked = self.workers
        if engine == "local" and asked > 1:
            self.workers = _local_workers(asked, n)
        # Ray without a chunk size: guided chunks (big while much is left, shrinking at the end)
        self._guided = engine == "ray" and not chunksize and bool(n)
        if chunksize:
            self.chunksize = max(1, int(chunksize))
        else:
            self.chunksize = ray_chunksize(n, self.workers) if self._guided else default_chunksize(n, self.workers)
        self._items = iter(enumerate(items))
        self.stats: dict[str, Any] = {"engine": engine, "workers": self.workers, "chunksize": self.chunksize}
        self.stats["chunking"] = "guided" if self._guided else "fixed"
        if self.workers != asked:
            self.stats["workers_asked"] = asked
        t0 = time.perf_counter()
        if engine == "ray":
            self._backend: _Backend = _RayBackend(init, fn, self.workers, object_store_mb, reuse_key)
        elif self.workers <= 1:
            self._backend = _InlineBackend(init, fn)
        else:
            method = _start_method(start_method, preload)
            self._backend = _PoolBackend(init, fn, self.workers, method, preload)
        self.stats.update(self._backend.describe())
        self.workers = int(self.stats["workers"])  # Ray: no more actors than the cluster's CPUs
        self.stats["startup_s"] = round(time.perf_counter() - t0, 3)
        self._gen: Generator[tuple[int, Any], None, None] | None = None

    def __iter__(self) -> MapRun[Result]:
        return self

    def __next__(self) -> tuple[int, Result | BaseException]:
        if self._gen is None:
            self._gen = self._run()
        return next(self._gen)

    def close(self) -> None:
        """Stop the workers (also done when the iteration ends or fails)."""
        if self._gen is not None:
            self._gen.close()
        self._backend.close(abort=True)

    def __enter__(self) -> MapRun[Result]:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _chunks(self) -> Iterator[list[tuple[int, Any]]]:
        left = self.total or 0
        while True:
            size = guided_chunk(left, self.workers, self.chunksize) if self._guided else self.chunksize
            chunk = [x for _, x in zip(range(size), self._items)]
            if not chunk:
                return
            left -= len(chunk)
            yield chunk

    def _run(self) -> Generator[tuple[int, Any], None, None]:
        from rich.progress import Progress

        desc = self.progress if isinstance(self.progress, str) else "working"
        t0 = time.perf_counter()
        count = 0
        ok = False
        try:
            with Progress(disable=not self.progress, transient=True) as bar:
                task = bar.add_task(desc, total=self.total)
                stream = self._backend.run(self._chunks(), self.workers * 2)
                for i, res in _in_order(stream) if self.ordered else stream:
                    count += 1
                    bar.update(task, advance=1)
                    yield i, res
            ok = True
        finally:
            self.stats["seconds"] = round(time.perf_counter() - t0, 3)
            self.stats["items"] = count
            self._backend.close(abort=not ok)
            self.stats.update(self._backend.describe())  # e.g. Ray actors' CPU, known at the end


def _in_order(stream: Iterator[tuple[int, Any]]) -> Iterator[tuple[int, Any]]:
    pending: dict[int, Any] = {}
    nxt = 0
    for i, res in stream:
        pending[i] = res
        while nxt in pending:
            yield nxt, pending.pop(nxt)
            nxt += 1
    for i in sorted(pending):  # only if indices had gaps (never for run_map's own enumeration)
        yield i, pending.pop(i)


class _Backend:
    def describe(self) -> dict[str, Any]:
        return {}

    def run(self, chunks: Iterator[list[tuple[int, Any]]], inflight: int) -> Iterator[tuple[int, Any]]:
        raise NotImplementedError

    def close(self, abort: bool = False) -> None:
        pass


class _InlineBackend(_Backend):
    def __init__(self, init: Callable[[], Any], fn: Callable[[Any, Any], Any]) -> None:
        self.fn = fn
        self.state = init()

    def describe(self) -> dict[str, Any]:
        return {"start_method": "inline"}

    def run(self, chunks: Iterator[list[tuple[int, Any]]], inflight: int) -> Iterator[tuple[int, Any]]:
        for chunk in chunks:
            yield from _run_chunk(self.state, self.fn, chunk)


class _PoolBackend(_Backend):
    """A ProcessPoolExecutor started now; every worker runs ``init`` once (waited for here)."""

    def __init__(
        self, init: Callable[[], Any], fn: Callable[[Any, Any], Any], workers: int, method: str, preload: Sequence[str]
    ) -> None:
        self.init, self.fn, self.workers, self.method, self.preload = init, fn, workers, method, list(preload)
        self.threads = worker_threads(workers)
        self.pool = self._start()

    def describe(self) -> dict[str, Any]:
        return {"start_method": self.method, "threads_per_worker": self.threads}

    def _start(self, workers: int | None = None) -> Any:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, wait

        ctx = mp.get_context(self.method)
        if self.method == "forkserver":
            ctx.set_forkserver_preload(["numpy", "onnxruntime", "medtransfer.shared.runtime.engines", *self.preload])
        n = workers or self.workers
        pool = ProcessPoolExecutor(
            n, mp_context=ctx, initializer=_worker_init, initargs=(self.init, self.fn, self.threads)
        )
        # start every worker (and its init) now, so start-up is measured apart from the work: a
        # worker answers only after its init, so wait until n distinct workers have answered
        seen: set[int] = set()
        for _ in range(200):
            done, _ = wait([pool.submit(_worker_ready) for _ in range(n)])
            for f in done:
                pid, err = f.result()
                if err is not None:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise err
                seen.add(pid)
            if len(seen) >= n:
                break
        return pool

    def run(self, chunks: Iterator[list[tuple[int, Any]]], inflight: int) -> Iterator[tuple[int, Any]]:
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        suspects: list[tuple[int, Any]] = []  # items of chunks lost with a dead worker
        running: dict[Any, list[tuple[int, Any]]] = {}
        source = iter(chunks)
        exhausted = False
        while True:
            broken = False
            while not exhausted and len(running) < inflight:
                chunk = next(source, None)
                if chunk is None:
                    exhausted = True
                    break
                try:
                    running[self.pool.submit(_worker_chunk, chunk)] = chunk
                except BrokenProcessPool:  # a worker died before this chunk went out (it never ran)
                    suspects.extend(chunk)
                    broken = True
                    break
            if not running and not broken:
                break
            done, _ = wait(list(running), return_when=FIRST_COMPLETED) if running else (set(), set())
            for fut in done:
                chunk = running.pop(fut)
                try:
                    yield from fut.result()
                except BrokenProcessPool:
                    suspects.extend(chunk)
                    broken = True
                except Exception as e:  # noqa: BLE001 - e.g. an item that cannot be pickled
                    err = _portable(e)
                    yield from ((i, err) for i, _ in chunk)
            if broken:
                for chunk in running.values():  # everything in flight went down with the pool
                    suspects.extend(chunk)
                running.clear()
                self.pool.shutdown(wait=False, cancel_futures=True)
                yield from self._isolate(suspects)
                suspects = []
                self.pool = self._start()

    def _isolate(self, items: list[tuple[int, Any]]) -> Iterator[tuple[int, Any]]:
        """Run each suspect item alone in a one-worker pool: the one that kills it gets WorkerDied."""
        from concurrent.futures.process import BrokenProcessPool

        pool = None
        for i, item in sorted(items, key=lambda x: x[0]):
            if pool is None:
                self.pool = pool = self._start(1)
            try:
                yield from pool.submit(_worker_chunk, [(i, item)]).result()
            except BrokenProcessPool:
                yield i, WorkerDied(f"the worker process died while running item {i} (crash or out of memory)")
                pool.shutdown(wait=False, cancel_futures=True)
                pool = None
        if pool is not None:
            pool.shutdown(wait=True)

    def close(self, abort: bool = False) -> None:
        pool = getattr(self, "pool", None)
        if pool is None:
            return
        if abort:
            procs = list((getattr(pool, "_processes", None) or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for p in procs:  # do not wait for chunks nobody will read
                if p.is_alive():
                    p.terminate()
        else:
            pool.shutdown(wait=True)
        self.pool = None


# ------------------------------------------------------------------------------ ray
_RAY_STARTED_HERE = False
#: the cluster address this process joined (None: none joined, or a Ray it started itself)
_RAY_CLUSTER: str | None = None
#: Ray jobs (``run_map(engine="ray")``) of this process in progress (a Ray started here is restarted
#: for more workers only when none is)
_RAY_JOBS = 0


def local_ray_cluster() -> str | None:
    """The address of a Ray cluster started on this machine with ``ray start`` (Ray's own record,
    ``ray_current_cluster`` in Ray's temporary folder, which ``ray stop`` clears), when something
    answers there; else None (no record, or a stale one: the cluster was killed).
    """
    try:
        from ray._private.utils import read_ray_address

        addr = read_ray_address()
    except Exception:  # noqa: BLE001 - no record, or a Ray without this helper: start one
        return None
    if not addr:
        return None
    try:
        probe_ray_address(addr, timeout_s=1.0)
    except MedTransferError:
        return None
    return addr


def _ray_error(e: BaseException, other: str = "or use RAY_ADDRESS=auto on its head node") -> str:
    """One line for a failed ``ray.init``: Ray's message, plus what to do when the cluster asked for
    a token (Ray 2.60's ``ray start`` turns token authentication on, and a driver given an explicit
    address never sends the token by itself)."""
    chain: list[str] = []
    seen: BaseException | None = e
    while seen is not None and len(chain) < 5:
        chain.append(f"{type(seen).__name__}: {seen}")
        seen = seen.__cause__ or seen.__context__
    text = " ".join(" ".join(chain).split())
    if "InvalidAuthToken" in text or "AuthenticationError" in text:
        if (os.environ.get("RAY_AUTH_MODE") or "").lower() == "token":
            return "the cluster refused this driver's token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"
        return (
            "the cluster asks for its token: set RAY_AUTH_MODE=token with the token in ~/.ray/auth_token, "
            f"RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN, {other}"
        )
    return f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"


def _token_auth_if_token_available() -> None:
    """Turn Ray's token authentication on for this process when ``RAY_AUTH_MODE`` is unset and a
    token is at hand (``~/.ray/auth_token``, ``RAY_AUTH_TOKEN_PATH``, ``RAY_AUTH_TOKEN``): what Ray's
    ``ray.init()`` does for the cluster ``ray start`` left on this machine, and never for an
    address it was given."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _probe_ray_auth(addr: str, where: str, other: str) -> None:
    """Refuse at once a cluster that asks for a token this driver will not send: one GCS handshake
    (milliseconds), where ``ray.init`` retried it for 20 s printing a warning each second.  Ray's
    own warning for the handshake is kept off stderr (this function says it in one line); any other
    outcome is left to ``ray.init``.

    Args:
        addr: the cluster's ``host:port``.
        where: what the one line says could not be done.
        other: the other way out the line offers.

    Raises:
        MedTransferError: the cluster refused the handshake for its token (one line).
    """
    if addr in ("auto", "local") or addr.startswith("ray://"):
        return
    try:
        from ray._raylet import GcsClient  # type: ignore[attr-defined]
        from ray.exceptions import AuthenticationError
    except ImportError:  # another Ray: leave it to ray.init
        return
    saved = None
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        try:
            GcsClient(address=addr)
        finally:
            os.dup2(saved, 2)
    except AuthenticationError as e:
        raise MedTransferError(f"--engine ray: could not {where} ({_ray_error(e, other)})") from None
    except Exception:  # noqa: BLE001 - anything else (a closed stderr, an old Ray): ray.init says it
        pass
    finally:
        if saved is not None:
            os.close(saved)


def ray_init(workers: int = 1, object_store_mb: int = 128) -> dict[str, Any]:
    """Join a running Ray cluster, else start a small local Ray (``workers`` CPUs); no-op if up.

    The cluster is ``RAY_ADDRESS`` when set (``local``: always a Ray of this process's own), else
    the one ``ray start`` left running on this machine (:func:`local_ray_cluster`; said in one line
    on stderr), as Ray's own ``ray.init()`` does.

    Returns:
        ``ray_init_s`` (0 when Ray was already up) and ``ray_address`` (``local`` or the address).

    Raises:
        MedTransferError: Ray is not installed, or it could not start / connect (one line).
    """
    global _RAY_STARTED_HERE, _RAY_CLUSTER
    try:
        import ray
    except ImportError:
        raise MedTransferError("--engine ray needs Ray: pip install 'medtransfer[distributed]'") from None
    env_addr = os.environ.get("RAY_ADDRESS") or None
    addr = None if env_addr == "local" else env_addr
    t0 = time.perf_counter()
    if not ray.is_initialized():
        found = None
        if addr:
            probe_ray_address(addr)
            where, other = f"join the cluster at RAY_ADDRESS={addr}", "or use RAY_ADDRESS=auto on its head node"
        elif env_addr is None:
            found = local_ray_cluster()
        if found:
            where, other = f"join the Ray cluster running on this machine ({found})", "or RAY_ADDRESS=local"
        elif not addr:
            where, other = "start a local Ray", ""
        # a private Ray is started with address="local" (ray.init() alone would join a cluster
        # running here and then refuse num_cpus); the one found above is joined at its address
        kw: dict[str, Any] = dict(
            address=addr or found or "local",
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
        if not (addr or found):
            kw.update(num_cpus=max(1, workers), object_store_memory=max(80, object_store_mb) * 1024 * 1024)
            # workers at this process's priority (Ray's default starts them 15 steps nicer, so any
            # other busy process on the machine starves them); no metrics export nobody reads
            kw["_system_config"] = {"worker_niceness": 0, "enable_metrics_collection": False}
        os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        # Ray warns on stderr that it turned token authentication on, for the cluster found here
        # (its own setting, which ``ray start`` printed; the line above names the cluster) and for
        # a private Ray (whose token never leaves this machine): not a thing the user must act on
        auth_log = logging.getLogger("ray._private.authentication.authentication_token_setup")
        level = auth_log.level
        auth_log.setLevel(logging.ERROR)
        try:
            if found:  # as Ray's ray.init() does for the cluster it finds: send the token when there is one
                _token_auth_if_token_available()
            if addr or found:
                _probe_ray_auth(addr or found or "", where, other)
            ray.init(**kw)
        except MedTransferError:
            raise
        except Exception as e:  # noqa: BLE001 - e.g. the node timed out starting on a loaded machine
            raise MedTransferError(f"--engine ray: could not {where} ({_ray_error(e, other)})") from None
        finally:
            auth_log.setLevel(level)
        if found:
            sys.stderr.write(
                f"--engine ray: joined the Ray cluster running on this machine ({found}; "
                "RAY_ADDRESS=local starts a private one)\n"
            )
        _RAY_STARTED_HERE = not (addr or found)
        _RAY_CLUSTER = addr or found
        _disconnect_at_exit()
        _ray_errors_to_stderr()
    return {"ray_init_s": round(time.perf_counter() - t0, 3), "ray_address": _RAY_CLUSTER or "local"}


def probe_ray_address(addr: str, timeout_s: float = 5.0) -> None:
    """Refuse a ``RAY_ADDRESS`` nothing listens at, before Ray tries it (Ray retries a dead address
    for minutes, printing warnings, and the job looked hung).  ``auto``/``local`` are Ray's own.

    Raises:
        MedTransferError: not ``host:port`` (or ``ray://host:port``), or no answer there (one line).
    """
    import socket

    if addr in ("auto", "local"):
        return
    host, _, port = addr.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise MedTransferError(f"--engine ray: RAY_ADDRESS={addr} is not host:port")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise MedTransferError(f"--engine ray: no Ray cluster answers at RAY_ADDRESS={addr} ({why})") from None


def _disconnect_ray() -> None:
    """Exit hook: disconnect from the Ray this module started or joined (when still up)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _ray_errors_to_stderr() -> None:
    """Send the cluster's error messages Ray's driver prints ("(raylet) A worker died ...") to
    stderr: Ray writes them to stdout from a background thread, whatever ``log_to_driver`` says,
    so they landed between (and after) the lines a job prints there for scripts to read
    (``score``'s summary, ``wsi extract``'s rows).  Our own account of a dead worker is its item's
    error row.  Left as it is when this Ray has no such printer (another version)."""
    try:
        from ray._private import worker as ray_worker
    except ImportError:
        return
    printer = getattr(ray_worker, "print_to_stdstream", None)
    if printer is None or getattr(printer, "medtransfer_stderr", False):
        return

    def to_stderr(data: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(data, dict) and not data.get("is_err"):
            data = {**data, "is_err": True}
        return printer(data, *args, **kwargs)

    to_stderr.medtransfer_stderr = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = to_stderr


def _disconnect_at_exit() -> None:
    """At interpreter exit, disconnect from the Ray this module started or joined before Ray's own
    exit hook does (registered after it, so it runs first): Ray's hook sleeps 0.5 s "to make sure
    that log messages finish printing", and this module's jobs print no worker logs
    (``log_to_driver=False``).  Measured: a ``score`` process on a cluster exited ~0.45 s sooner."""
    import atexit

    atexit.register(_disconnect_ray)


def _exit_status(code: Any) -> int:
    """The process exit status ``sys.exit(code)`` gives (a message goes to stderr, status 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        sys.stderr.write(f"{code}\n")
    except (OSError, ValueError):
        pass
    return 1


def fast_exit_enabled() -> bool:
    """``MEDTRANSFER_RAY_FAST_EXIT`` (default on; ``0``/``off``/``no``/``false`` turns it off)."""
    return not env_off("MEDTRANSFER_RAY_FAST_EXIT")


def end_ray_driver(code: Any = 0) -> None:
    """End this process now if it is a driver joined to a running Ray cluster; else return.

    A command-line job calls this once its command has finished (results written and closed).
    Ray's driver shutdown costs ~0.33 s per process whatever the job did (measured here on Ray
    2.60: ``shutdown_driver`` joins a gRPC completion-queue poller that looks for its stop flag
    every 250 ms, then tearing down its threads and mappings at interpreter exit takes ~0.08 s),
    which on a 1000-case job is ~7 % of the wall time.  So this process runs every other exit
    handler (logging, temporary files, ...), flushes stdout and stderr and ends with ``os._exit``
    and the command's status, skipping Ray's disconnect: the raylet sees the driver's connection
    close, as for any driver that ends (it logs ``graceful=false``; the GCS logs the driver's
    exit as a warning) and Ray ends the job's non-detached actors and frees its objects as it
    would after a disconnect; the warm pool's actors are detached and stay.

    Nothing is skipped (it returns) when: Ray is not initialised; this process started the Ray
    it uses (that Ray's processes must be stopped: :func:`shutdown_ray`); a non-daemon thread is
    still running; the interpreter has no ``atexit._run_exitfuncs``; or
    ``MEDTRANSFER_RAY_FAST_EXIT=0``.

    Args:
        code: what the command gave ``sys.exit`` (None, an exit status, or a message).
    """
    import atexit

    ray = sys.modules.get("ray")
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if ray is None or _RAY_STARTED_HERE or run_exit_handlers is None or not fast_exit_enabled():
        return
    try:
        if not ray.is_initialized():
            return
    except Exception:  # noqa: BLE001 - a broken Ray: leave it to the normal exit
        return
    main = threading.main_thread()
    if any(t is not main and t.is_alive() and not t.daemon for t in threading.enumerate()):
        return  # the normal exit waits for it
    status = _exit_status(code)
    atexit.unregister(ray.shutdown)  # Ray's own hook (0.5 s sleep, then the driver shutdown)
    atexit.unregister(_disconnect_ray)
    run_exit_handlers()  # everyone else's: logging flushed, temporary folders removed, ...
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(status)


def shutdown_ray() -> None:
    """Stop the local Ray this module started (nothing otherwise; a cluster is never stopped)."""
    global _RAY_STARTED_HERE
    if _RAY_STARTED_HERE:
        import ray

        ray.shutdown()
        _RAY_STARTED_HERE = False


def ray_keep_s() -> float:
    """Idle seconds before a pooled actor ends itself (``MEDTRANSFER_RAY_KEEP_S``; 0 = no pool).

    Raises:
        MedTransferError: not a number.
    """
    v = os.environ.get("MEDTRANSFER_RAY_KEEP_S", "")
    try:
        return max(0.0, float(v)) if v.strip() else RAY_KEEP_S
    except ValueError:
        raise MedTransferError(f"MEDTRANSFER_RAY_KEEP_S must be seconds (a number), not '{v}'") from None


def pool_name(threads: int, nice: int, i: int) -> str:
    """The Ray name of actor ``i`` of the warm pool for this thread budget and priority.

    One pool per cluster (and medtransfer version) serves every bundle: a job of another bundle
    opens its bundle in the same warm actors instead of starting new ones.
    """
    from medtransfer.shared import __version__

    digest = hashlib.sha256(f"{threads}|{nice}|{__version__}|{POOL_PROTOCOL}".encode()).hexdigest()[:24]
    return f"pool-{digest}-{i}"


#: the calls a pooled actor answers (part of the pool's name: a pool of other calls is not joined)
POOL_PROTOCOL = 2
#: states (opened bundles) a pooled actor keeps at most; the least recently used beyond go
POOL_STATES = 2
#: a pooled actor no job holds, idle this long, ends when other work on the cluster waits for CPUs
YIELD_IDLE_S = 2.0
#: how often an idle pooled actor looks (one GCS call, ~1 ms)
YIELD_POLL_S = 2.0
#: actor ``i`` of a pool yields only after ``i`` times this many idle seconds more
YIELD_STAGGER_S = 4.0


def _cpu_demand_waiting() -> bool:
    """Whether work on the cluster waits for CPUs: a pending request (task, actor or placement
    group bundle) asking for CPUs that fits on one of the live nodes (one that fits nowhere waits
    for ever whatever this pool does, and does not count).  One GCS call.

    Returns:
        False too when the cluster's state cannot be read (an older Ray): the pool keeps its time.
    """
    import ray

    try:
        from ray.autoscaler.v2.sdk import get_cluster_resource_state
        from ray.core.generated.autoscaler_pb2 import NodeStatus  # type: ignore[attr-defined]

        state = get_cluster_resource_state(ray._private.worker.global_worker.gcs_client)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - an older Ray, a GCS hiccup: nothing known to wait
        return False
    nodes = [dict(n.total_resources) for n in state.node_states if n.status != NodeStatus.DEAD]
    asks = [dict(r.request.resources_bundle) for r in state.pending_resource_requests]
    asks += [dict(r.request.resources_bundle) for g in state.pending_gang_resource_requests for r in g.requests]
    return any(
        ask.get("CPU", 0.0) > 0 and any(all(node.get(k, 0.0) >= v for k, v in ask.items()) for node in nodes)
        for ask in asks
    )


class _Ready(NamedTuple):
    """What :meth:`_RayWorker.ready` answers."""

    pid: int
    error: BaseException | None  # the key's ``init`` failed
    nice: int
    jobs: int  # jobs served, this one included
    cpu0: float  # CPU seconds before this job's ``init``
    warm: bool  # the key's state was open already


class _RayWorker:
    """A long-lived actor: ``init`` once per key, then chunks.  On the driver's machine it takes the
    driver's nice value (Ray starts its workers 15 steps nicer than the raylet, so on a shared
    machine any other busy process would starve them, where local workers compete as equals).

    A pooled actor serves several keys (bundles): :meth:`ready` opens a key's state (kept, at most
    :data:`POOL_STATES` of them; one evicted is rebuilt from its ``init`` when a chunk needs it)
    and takes a lease that :meth:`release` gives back when the job ends.
    """

    def __init__(self, threads: int, driver: tuple[str, int], keep_s: float = 0.0) -> None:
        import socket

        host, nice = driver
        self.nice = _renice(nice) if socket.gethostname() == host else niceness()
        _limit_threads(threads)
        self.recipes: dict[str, tuple[Callable[[], Any], Callable[[Any, Any], Any]]] = {}
        self.states: dict[str, Any] = {}  # key -> state, least recently used first
        self.leases: dict[str, int] = {}
        self.jobs, self.busy, self.last = 0, 0, time.monotonic()
        if keep_s > 0:  # a pooled actor: ends itself after keep_s idle seconds
            threading.Thread(target=self._expire, args=(keep_s,), daemon=True).start()

    def _expire(self, keep_s: float) -> None:
        while True:
            time.sleep(min(YIELD_POLL_S, max(keep_s / 4, 0.1)))
            try:
                if self.retire(keep_s, unleased_now=False) or self.yield_to_waiting_work():
                    return
            except Exception:  # noqa: BLE001 - e.g. a job's call changed the leases meanwhile: next round
                continue

    def yield_to_waiting_work(self) -> bool:
        """End this pooled actor when no job holds it, it has been idle :data:`YIELD_IDLE_S`
        seconds and other work on the cluster waits for CPUs (:func:`_cpu_demand_waiting`): an idle
        warm pool gives its CPUs to whoever needs them instead of holding them for its keep time
        (another user's task waited up to the whole 120 s).  Actor ``i`` of the pool waits
        ``i * YIELD_STAGGER_S`` seconds more, so one task waiting ends one actor, not the whole
        pool (the cluster's view of what waits lags the freed CPU by a worker's start, ~1-2 s
        here).  Returns whether it ended."""
        wait = YIELD_IDLE_S + YIELD_STAGGER_S * self._index()
        if self.busy or self.leases or time.monotonic() - self.last < wait:
            return False
        return _cpu_demand_waiting() and self.retire(YIELD_IDLE_S, unleased_now=True)

    def _index(self) -> int:
        """This actor's place in its pool (``pool-<digest>-<i>``; 0 when not named so)."""
        import ray

        try:
            name = ray.get_runtime_context().get_actor_name() or ""
            return int(name.rpartition("-")[2])
        except (ValueError, AttributeError):
            return 0

    def retire(self, idle_s: float = 2.0, unleased_now: bool = True) -> bool:
        """End this pooled actor unless a chunk runs or a job holds it; a job's lease counts for
        ``idle_s`` idle seconds only (a driver that died never gives it back).  With
        ``unleased_now`` an actor no job holds ends at once, else after ``idle_s`` idle seconds."""
        import ray

        if self.busy:
            return False
        need = idle_s if self.leases or not unleased_now else 0.0  # ``release`` drops a key at 0
        if time.monotonic() - self.last < need:
            return False
        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
        return True

    def _state(self, key: str) -> Any:
        """The state of ``key``: opened on first use (``init`` errors are kept as the state)."""
        if key in self.states:
            self.states[key] = self.states.pop(key)  # most recently used last
            return self.states[key]
        init = self.recipes[key][0]
        try:
            state: Any = init()
        except Exception as e:  # noqa: BLE001 - every item's result
            state = _InitFailed(_portable(e))
        self.states[key] = state
        while len(self.states) > POOL_STATES:  # drop the least recently used (rebuilt if needed)
            del self.states[next(iter(self.states))]
        return state

    @staticmethod
    def _enter(cwd: str | None) -> None:
        """Work in the job's folder (the driver's), when this machine has it: relative paths are
        the user's.  An actor runs one call at a time, so each call sets its job's."""
        if cwd and os.path.isdir(cwd):
            os.chdir(cwd)

    def ready(self, key: str, init: Callable[[], Any], fn: Callable[[Any, Any], Any], cwd: str | None = None) -> _Ready:
        """Open ``key``'s state (if not open) for a job and lease this actor to it."""
        self._enter(cwd)
        self.jobs += 1
        self.last = time.monotonic()
        cpu0, warm = self.cpu(), key in self.states
        self.recipes[key] = (init, fn)
        state = self._state(key)
        err = state.error if isinstance(state, _InitFailed) else None
        if err is not None:  # not kept: the next job of this key tries again
            self.states.pop(key, None)
            self.recipes.pop(key, None)
        else:
            self.leases[key] = self.leases.get(key, 0) + 1
        return _Ready(os.getpid(), err, self.nice, self.jobs, cpu0, warm)

    def release(self, key: str) -> float:
        """The job that leased this actor for ``key`` has ended; returns :meth:`cpu`."""
        n = self.leases.get(key, 0) - 1
        if n > 0:
            self.leases[key] = n
        else:
            self.leases.pop(key, None)
        self.last = time.monotonic()
        return self.cpu()

    def cpu(self) -> float:
        """CPU seconds (user + system) this actor's process has used, ``init`` included."""
        t = os.times()
        return t.user + t.system

    def run(
        self,
        key: str,
        init: Callable[[], Any],
        fn: Callable[[Any, Any], Any],
        chunk: list[tuple[int, Any]],
        cwd: str | None = None,
    ) -> list[tuple[int, Any]]:
        """One chunk of ``key``'s job (``init``/``fn`` come along: an actor Ray restarted, or one
        that dropped the state, opens it again), in the job's folder ``cwd``."""
        self._enter(cwd)
        self.recipes[key] = (init, fn)
        state = self._state(key)
        if isinstance(state, _InitFailed):
            return [(i, state.error) for i, _ in chunk]
        self.busy += 1
        try:
            return [
                (i, r if not isinstance(r, BaseException) else _portable(r))
                for i, r in _run_chunk(state, self.recipes[key][1], chunk)
            ]
        finally:
            self.busy -= 1
            self.last = time.monotonic()


class _InitFailed:
    """A key whose ``init`` raised: every item of it gets ``error``."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


#: tries to find or make a pooled actor that ended as a job found it
POOL_TRIES = 3


def _pool_actor(actor_cls: Any, name: str, threads: int, driver: tuple[str, int], keep_s: float) -> Any:
    """The warm pool's actor ``name``: the running one, or a new one (atomically, by name)."""
    opts = dict(name=name, namespace=RAY_NAMESPACE, lifetime="detached", get_if_exists=True)
    return actor_cls.options(**opts).remote(threads, driver, keep_s)


def _retire_idle_pools(keep: set[str]) -> int:
    """Ask every warm-pool actor on the cluster not named in ``keep`` to end itself if idle.

    Returns:
        How many were asked (they end asynchronously; busy ones stay).
    """
    import ray

    try:
        named = ray.util.list_named_actors(all_namespaces=True)
    except Exception:  # noqa: BLE001 - an older Ray / no permission: nothing retired
        return 0
    asked = 0
    for a in named:
        name = str(a.get("name", "")) if isinstance(a, dict) else ""
        if not isinstance(a, dict) or a.get("namespace") != RAY_NAMESPACE or not name.startswith("pool-"):
            continue
        if name in keep:
            continue
        try:
            ray.get_actor(name, namespace=RAY_NAMESPACE).retire.remote()
            asked += 1
        except Exception:  # noqa: BLE001 - gone meanwhile
            pass
    return asked


def _cluster_cpus() -> int:
    """CPUs the Ray cluster has now (0 when Ray cannot say)."""
    import ray

    try:
        return int(ray.cluster_resources().get("CPU", 0))
    except Exception:  # noqa: BLE001 - an older Ray / no answer: no cap
        return 0


def _wait_placed(
    refs: list[Any], free: Callable[[], Any] | None = None, note_after_s: float = 10.0, every_s: float = 2.0
) -> None:
    """Wait until the actors' first calls ``refs`` are done.  While some wait for a CPU, ``free`` is called
    every ``every_s`` seconds (idle pools that a running job held at the start end once it is
    done), and stderr says once, after ``note_after_s`` seconds, that the cluster's CPUs are busy."""
    import ray

    t0, noted = time.monotonic(), False
    while True:
        _, pending = ray.wait(refs, num_returns=len(refs), timeout=every_s)
        if not pending:
            return
        if free is not None:
            free()
        if not noted and time.monotonic() - t0 >= note_after_s:
            sys.stderr.write(
                f"--engine ray: waiting for the cluster to place {len(pending)} of {len(refs)} workers "
                "(its CPUs are in use by other work)\n"
            )
            noted = True


class _RayBackend(_Backend):
    def __init__(
        self,
        init: Callable[[], Any],
        fn: Callable[[Any, Any], Any],
        workers: int,
        object_store_mb: int,
        reuse_key: str | None = None,
    ) -> None:
        import socket

        global _RAY_JOBS
        t0 = time.perf_counter()
        keep_s = ray_keep_s() if reuse_key else 0.0  # a bad value is refused before Ray starts
        self.info = ray_init(workers, object_store_mb)
        import ray

        cluster = _RAY_CLUSTER  # None: a Ray started here
        keep = keep_s if cluster else 0.0
        cpus = _cluster_cpus()
        if not cluster and _RAY_STARTED_HERE and 0 < cpus < workers and _RAY_JOBS == 0:
            # the Ray this process started for an earlier job of fewer workers (a script that
            # preprocesses with 1 worker, then scores with 2): the job waited for CPUs that Ray
            # would never have; started again for this one (its actors went with their jobs)
            shutdown_ray()
            self.info = {**ray_init(workers, object_store_mb), "ray_restarted_for_workers": cpus}
            cpus = _cluster_cpus()
        if 0 < cpus < workers:  # actors beyond the cluster's CPUs would never start: the job hung
            ray_is = "the Ray cluster has" if cluster else "this process's Ray has"
            sys.stderr.write(f"--engine ray: {workers} workers asked, {ray_is} {cpus} CPUs: using {cpus}\n")
            self.info["workers_asked"] = workers
            workers = cpus
        self.info["workers"] = workers
        threads = 1 if cluster else worker_threads(workers)
        actor_cls = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=0)(_RayWorker)
        t1 = time.perf_counter()
        driver = (socket.gethostname(), niceness())
        self.pooled = keep > 0  # only with a reuse key on a running cluster (above)
        self.key = str(reuse_key) if self.pooled else "job"
        names = [pool_name(threads, driver[1], i) for i in range(workers)] if self.pooled else []
        if cluster:  # idle pools of another thread budget / priority / version give their CPUs back
            self.info["ray_pools_retired"] = _retire_idle_pools(set(names))
        if self.pooled:  # the warm pool: found or made, atomically by name; any bundle's jobs share it
            self.actors: list[Any] = [_pool_actor(actor_cls, name, threads, driver, keep) for name in names]
        else:
            self.actors = [actor_cls.remote(threads, driver) for _ in range(workers)]
        # actors up and this job's init done (or found done): start-up ends here
        self.leased: list[Any] = []
        self.job = (ray.put(init), ray.put(fn))  # stored once, sent by reference with each chunk
        # the actors work in the driver's folder: relative paths (an --input-dir, a manifest's
        # rows, --out, the bundle) mean what they mean to the user (a cluster's actors started in
        # `ray start`'s folder, and every case of a relative --input-dir was "file not found")
        self.cwd = os.getcwd()
        try:
            free = (lambda: _retire_idle_pools(set(names))) if cluster else None
            ready = self._handshake(lambda i: _pool_actor(actor_cls, names[i], threads, driver, keep), free)
        except Exception:
            # e.g. init / fn could not be unpickled there: a job's own actors go, a shared pool stays
            self.close(kill=not self.pooled)
            raise
        for r in ready:
            if r.error is not None:
                # a warm pool stays for other bundles (the failed state is not kept); a job's own actors go
                self.close(kill=not self.pooled)
                raise r.error
        # CPU before this job: 0 for a fresh actor (its start and init are this job's)
        self.cpu0 = [r.cpu0 if r.jobs > 1 else 0.0 for r in ready]
        self.info["ray_actors_s"] = round(time.perf_counter() - t1, 3)
        self.info["ray_pool"] = {"keep_s": keep} if self.pooled else None
        self.info["ray_actors_reused"] = sum(r.jobs > 1 for r in ready)
        self.info["ray_states_reused"] = sum(r.warm for r in ready)
        self.info["ray_startup_s"] = round(time.perf_counter() - t0, 3)
        _RAY_JOBS += 1
        self._counted = True  # until close()
        self.info["start_method"] = "ray-actors"
        self.info["threads_per_worker"] = threads
        self.info["driver_nice"] = driver[1]
        self.info["actor_nice"] = max(r.nice for r in ready)
        try:  # where to ask, when actors die, whether the cluster itself is still there
            self.gcs: str | None = ray.get_runtime_context().gcs_address
        except Exception:  # noqa: BLE001 - e.g. Ray client mode: not known
            self.gcs = None

    def _handshake(self, remake: Callable[[int], Any], free: Callable[[], Any] | None) -> list[_Ready]:
        """Every actor's :meth:`_RayWorker.ready` (this job's ``init`` and lease); the actors whose
        lease was taken go to ``self.leased`` as they answer.  A pooled actor that ended between
        this job's lookup and its call (an idle pool ends itself at its keep time, when another
        job asks, or when other work waits for its CPUs) is found or made again by name
        (``remake(i)``), up to :data:`POOL_TRIES` times; the job failed before.

        Returns:
            ``ready``'s answers, in actor order.
        """
        import ray

        refs = [a.ready.remote(self.key, *self.job, cwd=self.cwd) for a in self.actors]
        out: list[Any] = [None] * len(refs)  # every one set below, or the job fails
        todo = list(range(len(refs)))
        for attempt in range(1, POOL_TRIES + 1):
            _wait_placed([refs[i] for i in todo], free)
            again = []
            for i in todo:
                try:
                    out[i] = ray.get(refs[i])
                except ray.exceptions.RayActorError:
                    if not self.pooled or attempt == POOL_TRIES:
                        raise
                    again.append(i)
                    continue
                if out[i].error is None:
                    self.leased.append(self.actors[i])
            if not again:
                break
            time.sleep(0.2 * attempt)  # the ended actor's name is released with its end
            for i in again:
                self.actors[i] = remake(i)
                refs[i] = self.actors[i].ready.remote(self.key, *self.job, cwd=self.cwd)
            todo = again
        return out

    def describe(self) -> dict[str, Any]:
        return dict(self.info)

    def run(self, chunks: Iterator[list[tuple[int, Any]]], inflight: int) -> Iterator[tuple[int, Any]]:
        """Least-busy actor first; a finished chunk is replaced BEFORE its rows go to the caller
        (who may spend a while writing them), so no actor waits on the driver.

        An actor that dies takes the items of its chunks in flight with it, most of them innocent
        (a chunk holds up to 32; two are in flight per actor): they run again one at a time, each
        alone on one actor (Ray restarts it; the other actors go on with the job), and only an
        item that kills its actor when alone gets a :class:`WorkerDied` result, as with local
        workers (before, the whole chunk did).  When the cluster itself is gone (its GCS does not
        answer), the job stops with one line instead of giving every item left an error (here:
        1848 error rows over 44 s, which ``score --resume`` would then skip).

        Raises:
            MedTransferError: the cluster stopped answering during the job.
        """
        import collections

        import ray

        n = len(self.actors)
        per = max(1, inflight // n)  # chunks in flight per actor
        running: dict[Any, tuple[int, list[tuple[int, Any]], bool]] = {}
        load = [0] * n
        source = iter(chunks)
        suspects: collections.deque[tuple[int, Any]] = collections.deque()
        lone: int | None = None  # the actor that runs suspects, one at a time and nothing else

        def submit(k: int, chunk: list[tuple[int, Any]], alone: bool) -> None:
            # no task events: the GCS need not record every chunk of a long job
            ref = self.actors[k].run.options(enable_task_events=False).remote(self.key, *self.job, chunk, cwd=self.cwd)
            running[ref] = (k, chunk, alone)
            load[k] += 1

        def top_up() -> None:
            nonlocal lone
            if suspects and lone is None:
                lone = min(range(n), key=load.__getitem__)  # takes no new chunk from now on
            if lone is not None and load[lone] == 0:
                if suspects:
                    submit(lone, [suspects.popleft()], True)
                else:
                    lone = None
            others = [k for k in range(n) if k != lone]
            while others:
                k = min(others, key=load.__getitem__)  # least busy actor
                if load[k] >= per:
                    return
                chunk = next(source, None)
                if chunk is None:
                    return
                submit(k, chunk, False)

        top_up()
        while running:
            done, _ = ray.wait(list(running), num_returns=1)
            results: list[tuple[int, Any]] = []
            for ref in done:
                k, chunk, alone = running.pop(ref)
                load[k] -= 1
                try:
                    results.extend(ray.get(ref))
                except Exception as e:  # noqa: BLE001 - the actor died: its items run again alone
                    self._fail_if_cluster_gone(e)
                    if alone:
                        # a cluster going down ends its processes over a second or so (here the
                        # raylet first, the GCS later): look again before blaming the item
                        time.sleep(1.0)
                        self._fail_if_cluster_gone(e)
                        err = WorkerDied(f"the Ray actor died while running this item ({type(e).__name__})")
                        results.extend((i, err) for i, _ in chunk)
                    else:
                        suspects.extend(chunk)
            del done, ref  # no ref outlives its chunk: the result can leave the object store now
            top_up()  # before handing rows out (the caller may write each one durably)
            yield from results

    def _fail_if_cluster_gone(self, e: BaseException) -> None:
        """Raise when the cluster's GCS no longer answers (the actor's death was the cluster's).

        Raises:
            MedTransferError: one line naming the cluster.
        """
        if not self.gcs:
            return
        try:
            probe_ray_address(self.gcs, timeout_s=2.0)
        except MedTransferError:
            raise MedTransferError(
                f"--engine ray: the Ray cluster at {self.gcs} stopped answering during the job "
                f"({type(e).__name__}); the items without a result so far have none (score: run "
                "again with --resume once it is back)"
            ) from None

    def close(self, abort: bool = False, kill: bool = False) -> None:
        import ray

        global _RAY_JOBS
        if getattr(self, "_counted", False):
            _RAY_JOBS -= 1
            self._counted = False
        actors = getattr(self, "actors", [])
        leased = getattr(self, "leased", [])
        if leased and abort:  # best effort: an interrupted job does not wait on its actors
            for a in leased:
                a.release.remote(self.key)
        elif actors and not abort:  # the leases back, and what the actors used in this job
            try:
                leased_ids = {id(a) for a in leased}
                cpu = ray.get(
                    [a.release.remote(self.key) if id(a) in leased_ids else a.cpu.remote() for a in actors], timeout=10
                )
                self.info["actor_cpu_s"] = round(sum(cpu) - sum(getattr(self, "cpu0", [])), 2)
            except Exception:  # noqa: BLE001 - an actor is gone: no figure
                pass
        self.leased = []
        # a warm pool stays for the next job, even after a failed one (other jobs may be using
        # it); ``kill``: actors whose start failed
        if kill or not getattr(self, "pooled", False):
            for a in actors:
                try:
                    ray.kill(a)
                except Exception:  # noqa: BLE001 - already gone
                    pass
        self.actors = []


def run_map(
    init: Callable[[], State],
    fn: Callable[[State, Item], Result],
    items: Iterable[Item],
    *,
    engine: str = "local",
    workers: int = 1,
    chunksize: int | None = None,
    ordered: bool = False,
    progress: bool | str = False,
    start_method: str | None = None,
    object_store_mb: int = 128,
    preload: Sequence[str] = (),
    reuse_key: str | None = None,
) -> MapRun[Result]:
    """Map ``fn(state, item)`` over ``items`` with ``state = init()`` built once per worker.

    Workers start (and run ``init``) when this is called; the work starts on the first ``next()``.

    Args:
        init: builds the per-worker state (picklable; e.g. ``functools.partial(load_bundle, path)``).
        fn: ``fn(state, item) -> result`` (picklable); an ``Exception`` it raises is the item's result.
        items: the items (sent to workers as they are: paths or small records, not arrays).
        engine: ``local`` (processes on this machine) or ``ray`` (actors; ``RAY_ADDRESS`` honoured).
        workers: processes / actors; ``<=1`` with ``local`` runs in this process.
        chunksize: items per task (``None``: see :func:`default_chunksize`; Ray: :func:`guided_chunk`).
        ordered: yield in input order (else as finished).
        progress: show a rich progress bar (a string is its description).
        start_method: force ``fork`` / ``forkserver`` / ``spawn`` for local workers.
        object_store_mb: object store of a local Ray started here.
        preload: modules the workers need (e.g. a predictor's module): imported here before a
            ``fork`` (shared by the workers) or in the ``forkserver``.
        reuse_key: Ray on a running cluster: the identity of ``init``'s state (e.g. a verified
            bundle digest with its options); the actors are then the cluster's warm pool, which
            keeps this state open for the next job with the same key (see the module notes).
            None: actors die with the job.

    Returns:
        A :class:`MapRun`: iterate it for ``(index, result_or_exception)``; ``.stats`` for timings.

    Raises:
        MedTransferError: unknown engine, or Ray requested but not installed.
        Exception: whatever ``init`` raised (in this process or the first failing worker).
    """
    return MapRun(
        init,
        fn,
        items,
        engine,
        workers,
        chunksize,
        ordered,
        progress,
        start_method,
        object_store_mb,
        preload,
        reuse_key,
    )
