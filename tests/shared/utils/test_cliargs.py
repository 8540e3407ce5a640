"""The benches' command-line value checks: one argparse error line and exit 2, before anything runs."""

from __future__ import annotations

import argparse

import pytest

from medtransfer.shared.utils.cliargs import at_least, choice_list, int_list, positive_float


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench")
    p.add_argument("--n", type=at_least(1), default=2)
    p.add_argument("--sizes", type=int_list(32, multiple_of=32), default="256,512")
    p.add_argument("--duration", type=positive_float, default=1.0)
    p.add_argument("--devices", type=choice_list(("auto", "cpu", "cuda")), default="auto")
    return p


def test_good_values_and_string_defaults_are_converted():
    a = _parser().parse_args([])
    assert (a.n, a.sizes, a.duration, a.devices) == (2, [256, 512], 1.0, "auto")
    a = _parser().parse_args(["--n", "7", "--sizes", " 64, 1024 ", "--duration", "2.5", "--devices", "cpu,cuda"])
    assert (a.n, a.sizes, a.duration, a.devices) == (7, [64, 1024], 2.5, "cpu,cuda")


@pytest.mark.parametrize(
    "argv,says",
    [
        (["--n", "0"], "argument --n: 0: expected at least 1"),
        (["--n", "x"], "argument --n: 'x' is not a whole number"),
        (["--sizes", "abc"], "argument --sizes: 'abc' is not a whole number"),
        (["--sizes", "0"], "argument --sizes: 0: expected at least 32"),
        (["--sizes", "256,100"], "argument --sizes: 100: expected a multiple of 32"),
        (["--sizes", ","], "expected comma-separated numbers"),
        (["--duration", "nan"], "argument --duration: nan: expected a number above 0"),
        (["--duration", "-1"], "expected a number above 0"),
        (["--duration", "inf"], "expected a number above 0"),
        (["--devices", "tpu"], "argument --devices: 'tpu': expected one or more of auto, cpu, cuda"),
        (["--devices", "cpu,"], None),  # a trailing comma is tolerated
    ],
)
def test_bad_values_end_in_one_line(argv, says, capsys):
    if says is None:
        assert _parser().parse_args(argv).devices == "cpu,"
        return
    with pytest.raises(SystemExit) as e:
        _parser().parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("bench: error: ") and says in last and "Traceback" not in err  # usage, then one line


@pytest.mark.parametrize(
    "module,argv,says",
    [
        ("medtransfer.apps.videoseg.bench", ["--sizes", "abc"], "'abc' is not a whole number"),
        ("medtransfer.apps.videoseg.bench", ["--sizes", "0", "--micro"], "0: expected at least 32"),
        ("medtransfer.apps.videoseg.bench", ["--cpu-sets", "0;99999"], "not CPUs this process may use"),
        ("medtransfer.apps.wsi.bench", ["--devices", "tpu"], "expected one or more of auto, cpu, cuda"),
        ("medtransfer.apps.wsi.bench", ["--slide", "/no/such.svs"], "/no/such.svs: slide not found"),
        ("medtransfer.apps.eeg.bench", ["-3"], "-3: expected at least 4"),
        ("medtransfer.shared.bench", ["score", "b", "s", "--cases", "1000,0"], "0: expected at least 1"),
        ("medtransfer.shared.bench", ["cold", "b", "s", "--repeats", "0"], "0: expected at least 1"),
    ],
)
def test_bench_command_lines_refuse_bad_values_before_running(module, argv, says, capsys):
    """These ran before: a traceback (sizes 'abc'), minutes of work on a size of 0, an empty JSON
    and exit 0 for an unknown device, a negative recording count."""
    import importlib

    mod = importlib.import_module(module)
    main = getattr(mod, "main", None) or mod._main
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert says in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("text", ["abc", "nan", "-0.5", "1.5", "0", ""])
def test_number_list_refuses_what_is_no_fraction(text):
    from medtransfer.shared.utils.cliargs import number_list
    from medtransfer.shared.utils.errors import ConfigError

    with pytest.raises(ConfigError, match="--fractions"):
        number_list(text, "--fractions", 0.0, 1.0, lo_open=True)


def test_number_list_reads_fractions_and_seeds():
    from medtransfer.shared.utils.cliargs import number_list

    assert number_list("0.1, 1.0", "--fractions", 0.0, 1.0, lo_open=True) == [0.1, 1.0]
    assert number_list("0,1,2", "--seeds", 0, 100, integer=True) == [0, 1, 2]
