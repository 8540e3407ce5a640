"""The shared bench on a video bundle: its predictor needs a prompt, which ``--opt`` gives to the
cold start and the score runs (without it the bench stopped at the first predict)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from medtransfer.shared.bench import cold_start, score_scaling
from medtransfer.shared.runtime.score import Case
from medtransfer.shared.utils.errors import MedTransferError


def test_bench_gives_a_video_bundle_its_prompt(vs_bundle, vs_echo):
    videos = sorted(Path(vs_echo["root"]).rglob("*.avi"))[:2]
    with pytest.raises(MedTransferError, match="no prompt"):
        cold_start(vs_bundle, videos[0], repeats=1, uncached=False)
    box = {"box": "20,20,100,100"}
    c = cold_start(vs_bundle, videos[0], repeats=1, uncached=False, options=box)
    assert c["predict_cold_start_s"] > 0
    cases = [Case(v.name, str(v), {}) for v in videos]
    s = score_scaling(vs_bundle, cases, workers=2, options=box)
    assert s["cases"] == 2 and s["score_cases_per_s_1w"] > 0 and s["score_cases_per_s_2w"] > 0
    assert s["score_errors_1w"] == s["score_errors_2w"] == 0
    assert score_scaling(vs_bundle, cases, workers=1)["score_errors_1w"] == 2  # no prompt: error rows, counted
    p = subprocess.run(
        [sys.executable, "-m", "medtransfer.shared.bench", "cold", str(vs_bundle), str(videos[0]),
         "--repeats", "1", "--opt", "box=20,20,100,100"], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0 and '"predict_cold_start_s"' in p.stdout, p.stderr[-2000:]
