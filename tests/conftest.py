"""Shared fixtures: a tiny trained image bundle built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("MPLBACKEND", "Agg")
# `--engine ray` without RAY_ADDRESS joins a cluster `ray start` left on this machine (as Ray's own
# ray.init() does): tests get a Ray of their own unless they set RAY_ADDRESS themselves
os.environ.setdefault("RAY_ADDRESS", "local")
# the runtime's per-user cache (verified digests, optimised ONNX graphs) goes to a folder of this test
# session, not the developer's ~/.cache: tests neither read a stale entry nor leave 100s of MB behind
if "MEDTRANSFER_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _cache = tempfile.mkdtemp(prefix="medtransfer-test-cache-")
    os.environ["MEDTRANSFER_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, True)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repo; skips the test when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def image_run(tmp_path_factory) -> dict:
    """Shapes dataset -> manifest -> 2-epoch resnet18 run -> exported bundle (built once)."""
    from medtransfer.shared.imagetask.data import import_image_folder, make_shapes
    from medtransfer.shared.imagetask.task import export_run, train

    work = tmp_path_factory.mktemp("imagetask")
    root = make_shapes(work / "shapes", n_per_class=12, size=32)
    man = import_image_folder(root, work / "m.csv")
    train(man, work / "run", overrides=["train.epochs=2", "train.progress=false", "data.size=32"])
    # a 2-epoch plumbing model: it does not beat the majority class, so the trivial-baseline guard
    # needs force; its answers carry the bundle's unreliable reason ("bundle: ...")
    bundle = export_run(work / "run", work / "bundle", force=True)
    return {"work": work, "root": root, "manifest": man, "run": work / "run", "bundle": bundle}


# ------------------------------------------------------------------------------------ fuzzing
# Property-based reader fuzzing (hypothesis).  `make test` runs FUZZ_RUNS cases per reader;
# nightly: `pytest tests -k fuzz --fuzz-runs 5000` (or MEDTRANSFER_FUZZ_RUNS=5000).
FUZZ_RUNS_DEFAULT = 200
FUZZ_CASE_TIMEOUT_S = 10.0


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.gpu`` tests skip cleanly where torch sees no CUDA device."""
    gpu = [it for it in items if it.get_closest_marker("gpu")]
    if not gpu:
        return
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - no torch, no GPU tests
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs a CUDA device (run `pytest -m gpu` on a GPU machine)")
        for it in gpu:
            it.add_marker(skip)


def pytest_addoption(parser):
    parser.addoption(
        "--fuzz-runs",
        type=int,
        default=None,
        help=f"cases per reader for the fuzz tests (default {FUZZ_RUNS_DEFAULT}, env MEDTRANSFER_FUZZ_RUNS)",
    )


def fuzz_runs(config=None) -> int:
    """Cases per reader: --fuzz-runs, else $MEDTRANSFER_FUZZ_RUNS, else FUZZ_RUNS_DEFAULT."""
    if config is not None and config.getoption("--fuzz-runs"):
        return int(config.getoption("--fuzz-runs"))
    return int(os.environ.get("MEDTRANSFER_FUZZ_RUNS") or FUZZ_RUNS_DEFAULT)


class Fuzz:
    """What every reader fuzz test uses: hypothesis settings, a byte-mutation strategy and the check.

    Use::

        @given(data=st.data())
        def test_x(fuzz, data, tmp_path_factory): ...

    or, simpler, ``fuzz.run(seed_bytes, suffix, reader, tmp_path)`` which draws ``fuzz.runs``
    mutations of ``seed_bytes`` and asserts the reader returns or raises our own
    MedTransferError (never another exception) within FUZZ_CASE_TIMEOUT_S per case.
    """

    def __init__(self, runs: int) -> None:
        self.runs = runs
        self.found: list[str] = []

    def settings(self, **kw):
        from hypothesis import HealthCheck, settings

        return settings(
            max_examples=self.runs,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
            **kw,
        )

    @staticmethod
    def mutations(seed: bytes):
        """Strategy: ``seed`` with byte flips, overwrites, insertions, deletions and truncation."""
        from hypothesis import strategies as st

        n = max(len(seed), 1)
        op = st.one_of(
            st.tuples(st.just("set"), st.integers(0, n - 1), st.integers(0, 255)),
            st.tuples(st.just("flip"), st.integers(0, n - 1), st.integers(0, 7)),
            st.tuples(st.just("ins"), st.integers(0, n), st.binary(min_size=1, max_size=16)),
            st.tuples(st.just("del"), st.integers(0, n - 1), st.integers(1, 64)),
            # header-heavy: most format bugs live in the first few hundred bytes
            st.tuples(st.just("set"), st.integers(0, min(n - 1, 511)), st.integers(0, 255)),
            st.tuples(
                st.just("ascii"),
                st.integers(0, min(n - 1, 511)),
                st.sampled_from([b"0", b"-1", b"99999999", b" ", b"\x00", b"nan", b"1e308", b"\xff\xff\xff\xff"]),
            ),
        )

        def apply(ops_trunc):
            ops, trunc = ops_trunc
            b = bytearray(seed)
            for kind, pos, arg in ops:
                if not b:
                    break
                pos = min(pos, len(b) - 1) if kind != "ins" else min(pos, len(b))
                if kind == "set":
                    b[pos] = arg
                elif kind == "flip":
                    b[pos] ^= 1 << arg
                elif kind == "ins":
                    b[pos:pos] = arg
                elif kind == "del":
                    del b[pos : pos + arg]
                elif kind == "ascii":
                    b[pos : pos + len(arg)] = arg
            if trunc is not None:
                b = b[: max(0, int(len(b) * trunc))]
            return bytes(b)

        return st.tuples(st.lists(op, min_size=1, max_size=8), st.one_of(st.none(), st.floats(0.0, 1.0))).map(apply)

    def check(self, reader, path) -> None:
        """Call ``reader(path)``: a result or MedTransferError pass; anything else fails the test."""
        import signal

        from medtransfer.shared.utils.errors import MedTransferError

        def _alarm(*_):
            raise TimeoutError(f"reader hung over {FUZZ_CASE_TIMEOUT_S}s")

        old = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, FUZZ_CASE_TIMEOUT_S)
        try:
            reader(path)
        except MedTransferError as e:
            msg = str(e)
            assert "\n" not in msg, f"multi-line error: {msg!r}"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)

    def run(self, seed: bytes, suffix: str, reader, tmp_path) -> None:
        """Fuzz ``reader`` with ``self.runs`` mutations of ``seed`` written to ``tmp_path/case<suffix>``."""
        from hypothesis import given

        target = Path(tmp_path) / f"case{suffix}"

        @self.settings()
        @given(self.mutations(seed))
        def _one(blob: bytes) -> None:
            target.write_bytes(blob)
            self.check(reader, target)

        _one()


@pytest.fixture(scope="session")
def fuzz(request) -> Fuzz:
    """The reader-fuzzing helper (see :class:`Fuzz`); cases per reader from --fuzz-runs."""
    pytest.importorskip("hypothesis")
    return Fuzz(fuzz_runs(request.config))
