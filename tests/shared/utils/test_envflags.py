"""On/off switches from environment variables: only the listed words count, any case, spaces ignored."""

from __future__ import annotations

import pytest

from medtransfer.shared.utils.envflags import env_off, env_on


@pytest.mark.parametrize("value", ["0", "off", "No", " FALSE "])
def test_off_words(monkeypatch, value):
    monkeypatch.setenv("MEDTRANSFER_T", value)
    assert env_off("MEDTRANSFER_T") and not env_on("MEDTRANSFER_T")


@pytest.mark.parametrize("value", ["1", "on", "Yes", " TRUE "])
def test_on_words(monkeypatch, value):
    monkeypatch.setenv("MEDTRANSFER_T", value)
    assert env_on("MEDTRANSFER_T") and not env_off("MEDTRANSFER_T")


@pytest.mark.parametrize("value", [None, "", "2", "disabled", "offf"])
def test_anything_else_is_neither(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("MEDTRANSFER_T", raising=False)
    else:
        monkeypatch.setenv("MEDTRANSFER_T", value)
    assert not env_on("MEDTRANSFER_T") and not env_off("MEDTRANSFER_T")
