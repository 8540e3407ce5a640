"""One error path: every known error from any command is one line on stderr and exit code 2."""

from __future__ import annotations

import pytest
from cliutil import run_main

from medtransfer.shared.config import check_ranges, resolve_config
from medtransfer.shared.utils.errors import ConfigError


def _main(args: list[str], capsys) -> tuple[int, str]:
    """(exit code, stderr) of the console entry point run in-process."""
    code, _, err = run_main(args, capsys)
    return code, err


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize(
    "setting,needle",
    [
        ("train.lr=-0.1", "'train.lr' must be > 0"),
        ("train.batch_size=0", "'train.batch_size' must be >= 1"),
        ("train.strategy=bogus", "'train.strategy' must be one of"),
        ("train.epochs=0", "'train.epochs' must be >= 1"),
        ("train.lr=.nan", "'train.lr' must be a number"),
        ("train.epochs=1.5", "'train.epochs' must be a whole number, got 1.5"),
        ("train.patience=2.5", "'train.patience' must be a whole number"),
        ("train.seed=99999999999999999999", "'train.seed' must be from 0 to 2147483647"),
        ("train.seed=-1", "'train.seed' must be from 0 to 2147483647"),
    ],
)
def test_out_of_range_config_is_one_line(tmp_path, capsys, image_run, setting, needle):
    code, err = _main(
        ["image", "train", "-m", str(image_run["manifest"]), "-o", str(tmp_path / "r"), "--set", setting], capsys
    )
    assert code == 2 and needle in _one_line(err)
    assert not (tmp_path / "r" / "checkpoints").exists()  # refused before any work


def test_range_rules_apply_to_programmatic_configs():
    with pytest.raises(ConfigError, match="train.weight_decay"):
        check_ranges({"train": {"weight_decay": -1}})
    with pytest.raises(ConfigError, match="train.optimizer"):
        resolve_config({"train": {"optimizer": "adamw"}}, overrides=["train.optimizer=rmsprop"])


def test_every_strategy_name_is_known_to_the_engine():
    from medtransfer.shared.config import TRAIN_RULES
    from medtransfer.shared.finetune.strategies import STRATEGIES

    assert tuple(TRAIN_RULES["strategy"][1]) == STRATEGIES


def test_unquoted_comma_in_manifest_is_one_line_with_line_number(tmp_path, capsys, image_run):
    m = tmp_path / "m.csv"
    m.write_text("path,label\nimg1.png,circle\nimg2.png,circle, big\n")
    code, err = _main(["image", "train", "-m", str(m), "-o", str(tmp_path / "r")], capsys)
    line = _one_line(err)
    assert code == 2 and str(m) in line and "line 3" in line and "quoted" in line


def test_single_class_training_is_refused(tmp_path, capsys, image_run):
    from medtransfer.shared.manifest import read_manifest, write_manifest

    recs = read_manifest(image_run["manifest"])
    one = recs[0].label
    m = write_manifest([r for r in recs if r.label == one], tmp_path / "one.csv")
    code, err = _main(["image", "train", "-m", str(m), "-o", str(tmp_path / "r")], capsys)
    assert code == 2 and "only class" in _one_line(err)


def test_os_error_on_a_user_path_is_one_line(tmp_path, capsys, image_run):
    ro = tmp_path / "ro"
    ro.mkdir()
    blocker = ro / "file"
    blocker.write_text("x")
    # the run folder's parent is a regular file: mkdir fails with an OSError, shown as one line
    code, err = _main(
        ["image", "train", "-m", str(image_run["manifest"]), "-o", str(blocker / "run"), "--set", "train.epochs=1"],
        capsys,
    )
    assert code == 2 and "file" in _one_line(err)
