"""`medtransfer bench` pieces produce real measurements (no speed assertions: numbers go to notes)."""
from pathlib import Path

from medtransfer.shared.bench import cold_start, onnx_vs_eager, score_scaling
from medtransfer.shared.runtime.score import Case


def test_bench_measures(image_run):
    b = Path(image_run["bundle"])
    r = onnx_vs_eager(b, batch=4, threads=1)
    assert r["onnx_items_per_s"] > 0 and r["eager_items_per_s"] > 0 and r["threads"] == 1
    imgs = sorted(Path(image_run["root"]).rglob("*.png"))
    c = cold_start(b, imgs[0], repeats=1)
    assert c["predict_cold_start_s"] > 0
    s = score_scaling(b, [Case(p.name, str(p), {}) for p in imgs[:6]], workers=2)
    assert s["score_cases_per_s_1w"] > 0 and s["score_cases_per_s_2w"] > 0


def test_export_int8_records_metric_change(image_run, tmp_path):
    import json

    from medtransfer.shared.imagetask.task import export_run
    from medtransfer.shared.runtime.bundle import load_bundle

    out = export_run(image_run["run"], tmp_path / "q", quantize="int8")
    meta = json.loads((out / "metadata.json").read_text())
    assert set(meta["files"]) == {"model.onnx", "model.int8.onnx"}
    q = meta["metrics"]["int8"]
    assert abs(q["val_accuracy_change"] - (q["val_accuracy_int8"] - q["val_accuracy_fp32"])) < 1e-9
    load_bundle(out)  # both files hash-checked
