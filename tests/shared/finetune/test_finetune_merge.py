"""``medtransfer merge`` and shared.finetune.merge: TIES / task arithmetic / average on state dicts and run folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from cliutil import run_main
from torch import nn

from medtransfer.shared.finetune import merge as M
from medtransfer.shared.rundir import RunDir, build_from_spec


# ------------------------------------------------------------------------------------ state dicts
def _sd(**kw):
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in kw.items()}


@pytest.mark.parametrize("method", M.METHODS)
def test_merging_copies_returns_the_run(method):
    g = torch.Generator().manual_seed(0)
    base = {"a": torch.randn(8, 4, generator=g), "b": torch.randn(4, generator=g)}
    run = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    run["bn.running_mean"] = torch.randn(4, generator=g)
    run["bn.num_batches_tracked"] = torch.tensor(7)
    run["head.weight"] = torch.randn(3, 4, generator=g)  # not in the base: averaged
    # ties keeps everything with trim=1 (a smaller trim returns the run with its task vector trimmed)
    merged, _ = M.merge_state_dicts([run, dict(run)], base, method, trim=1.0)
    assert list(merged) == list(run)
    for k in run:
        assert torch.allclose(merged[k], run[k], atol=1e-6), k


def test_ties_copies_with_trim_keep_the_largest_updates():
    base = _sd(w=[0.0, 0.0, 0.0, 0.0])
    run = _sd(w=[1.0, -5.0, 0.2, 3.0])
    merged, rep = M.merge_state_dicts([run, run], base, "ties", trim=0.5)
    assert merged["w"].tolist() == [0.0, -5.0, 0.0, 3.0]
    assert rep["kept_fraction"] == pytest.approx(0.5)


def test_ties_matches_hand_computation():
    # task vectors over two tensors (trimming is global over the whole vector), three sites, keep 50%
    base = _sd(w=[1.0, 1.0, 1.0], v=[0.0, 0.0, 0.0])
    s1 = _sd(w=[1 + 3.0, 1 - 1.0, 1 + 0.5], v=[2.0, 0.1, -0.2])  # tau1 = [3,-1,.5 | 2,.1,-.2] keeps 3,-1,2
    s2 = _sd(w=[1 - 2.0, 1 - 4.0, 1 + 0.1], v=[1.0, -0.3, 0.0])  # tau2 = [-2,-4,.1 | 1,-.3,0] keeps -2,-4,1
    s3 = _sd(w=[1 + 1.0, 1 + 0.2, 1 - 3.0], v=[-0.5, 0.0, 2.5])  # tau3 = [1,.2,-3 | -.5,0,2.5] keeps 1,-3,2.5
    # trimmed: t1 = [3,-1,0 | 2,0,0]; t2 = [-2,-4,0 | 1,0,0]; t3 = [1,0,-3 | 0,0,2.5]
    # elected sign of sums [2,-5,-3 | 3,0,2.5] = [+,-,- | +,0,+]
    # disjoint means: w0 mean(3,1)=2; w1 mean(-1,-4)=-2.5; w2 -3; v0 mean(2,1)=1.5; v1 0; v2 2.5
    merged, rep = M.merge_state_dicts([s1, s2, s3], base, "ties", trim=0.5, scale=0.5)
    assert torch.allclose(merged["w"], torch.tensor([1 + 1.0, 1 - 1.25, 1 - 1.5]))
    assert torch.allclose(merged["v"], torch.tensor([0.75, 0.0, 1.25]))
    # entries kept by two or more sites with opposite signs: w0 (3,-2,1) only
    assert rep["sign_conflict_fraction"] == pytest.approx(1 / 6)


def test_task_arithmetic_and_average_by_hand():
    base = _sd(w=[1.0, 2.0])
    s1, s2 = _sd(w=[2.0, 2.0]), _sd(w=[1.0, 4.0])
    ta, _ = M.merge_state_dicts([s1, s2], base, "task_arithmetic", scale=1.0)
    assert ta["w"].tolist() == [2.0, 4.0]  # base + (1,0) + (0,2)
    ta_default, rep = M.merge_state_dicts([s1, s2], base, "task_arithmetic")
    assert rep["scale"] == 0.5 and ta_default["w"].tolist() == [1.5, 3.0]
    avg, _ = M.merge_state_dicts([s1, s2], None, "average")
    assert avg["w"].tolist() == [1.5, 3.0]
    with pytest.raises(M.MergeError):
        M.merge_state_dicts([s1, s2], None, "ties")


def test_lora_is_merged_in_dense_form_and_loads_back():
    from medtransfer.shared.peft import apply_lora

    torch.manual_seed(0)

    def net():
        torch.manual_seed(1)
        m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
        apply_lora(m, targets=["0", "2"], r=2, alpha=4.0)
        return m

    base = net().state_dict()
    sites = []
    for seed in (2, 3):
        m = net()
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for n, p in m.named_parameters():
                if "lora_" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        sites.append(m)
    scal = M.lora_scalings(sites[0])
    assert set(scal) == {"0", "2"}
    x = torch.randn(5, 2, 5, 5)
    dense = [M.fold_lora(m.state_dict(), scal) for m in sites]
    merged, _ = M.merge_state_dicts(dense, M.fold_lora(base, scal), "task_arithmetic")  # mean update
    out = net()
    out.load_state_dict(M.unfold_lora(merged, sites[0].state_dict(), scal))  # same keys: loads strictly
    with torch.no_grad():
        h = torch.randn(5, 4 * 5 * 5)
        for i, inp in ((0, x), (2, h)):  # each layer is linear in its weights: mean update = mean output
            want = (sites[0][i](inp) + sites[1][i](inp)) / 2
            assert torch.allclose(out[i](inp), want, atol=1e-4)
        assert float(out[2].lora_b.weight.abs().sum()) == 0.0


# ------------------------------------------------------------------------------------- run folders
def _site(src: Path, dst: Path, change) -> Path:
    """A run folder like ``src`` whose best checkpoint's weights (and anything else) ``change`` edits."""
    run = RunDir(src)
    dst.mkdir(parents=True)
    shutil.copy(src / "config.yaml", dst / "config.yaml")
    info = {k: v for k, v in run.info().items() if k != "checkpoints"}
    ck = run.load_checkpoint("best")
    change(ck, info)
    RunDir(dst, must_exist=False).write_info(info)
    RunDir(dst).save_checkpoint(ck, "best")
    return dst


def _nudge(seed: int):
    def change(ck, info):
        g = torch.Generator().manual_seed(seed)
        ck["model"] = {
            k: (v + 0.02 * v.std() * torch.randn(v.shape, generator=g))
            if v.is_floating_point() and v.numel() > 1
            else v
            for k, v in ck["model"].items()
        }

    return change


@pytest.fixture(scope="module")
def sites(image_run, tmp_path_factory):
    work = tmp_path_factory.mktemp("merge")
    base = image_run["run"]
    return {
        "base": base,
        "work": work,
        "a": _site(base, work / "site_a", _nudge(1)),
        "b": _site(base, work / "site_b", _nudge(2)),
    }


def test_merge_copies_of_a_run_via_cli(sites, tmp_path, capsys):
    # every method is checked on state dicts above; through the CLI and run folders: ties (trim 1)
    a = sites["a"]
    a2 = tmp_path / "a_copy"
    shutil.copytree(a, a2)
    out = tmp_path / "ties"
    code, _, err = run_main(["merge", a, a2, "--base", sites["base"], "-o", out, "--trim", "1"], capsys)
    assert code == 0, err
    want = RunDir(a).load_checkpoint("best")["model"]
    got = RunDir(out).load_checkpoint("best")["model"]
    assert list(got) == list(want)
    for k, v in want.items():
        assert torch.allclose(got[k].float(), v.float(), atol=1e-5), k


def test_merged_run_is_an_ordinary_run_and_exports(sites, image_run, tmp_path, capsys):
    from medtransfer.shared.export.guard import BelowBaselineError
    from medtransfer.shared.imagetask.task import evaluate, export_run

    out = tmp_path / "merged"
    code, stdout, err = run_main(
        ["merge", sites["a"], sites["b"], "--base", sites["base"], "--method", "ties", "-o", out], capsys
    )
    assert code == 0, err
    info = RunDir(out).info()
    rec = info["merged_from"]
    assert rec["method"] == "ties" and rec["trim"] == 0.2 and len(rec["runs"]) == 2
    assert rec["base"]["kind"] == "run" and info["checkpoints"]["best"]["sha256"]
    assert info["baseline"]["beats_baseline"] is False  # not validated yet
    model, ck = RunDir(out).load_model("best")  # rebuilt from the recorded spec
    assert ck["merged_from"]["method"] == "ties" and ck["labels"] == info["labels"]
    a = RunDir(sites["a"]).load_checkpoint("best")["model"]
    assert any(not torch.equal(ck["model"][k], a[k]) for k in a if a[k].is_floating_point())
    assert evaluate(out, image_run["manifest"])["n"] > 0
    with pytest.raises(BelowBaselineError):
        export_run(out, tmp_path / "bundle")
    bundle = export_run(out, tmp_path / "bundle", force=True)
    assert (bundle / "model.onnx").is_file()


def _relabel(ck, info):
    info["labels"] = list(reversed(info["labels"]))
    ck["labels"] = info["labels"]


def _other_arch(ck, info):
    ck["model_spec"] = {**ck["model_spec"], "registry": "resnet34"}


def _other_base(ck, info):
    fresh = build_from_spec(ck["model_spec"]).state_dict()  # same architecture, another start
    ck["model"] = fresh


@pytest.mark.parametrize(
    "change,words", [(_other_arch, "different architecture"), (_relabel, "labels"), (_other_base, "not fine-tuned")]
)
def test_refusals_are_one_line(sites, tmp_path, capsys, change, words):
    bad = _site(sites["base"], tmp_path / "bad", change)
    code, _, err = run_main(["merge", sites["a"], bad, "--base", sites["base"], "-o", tmp_path / "m"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], err
    assert not (tmp_path / "m").exists()


def test_average_without_base_refuses_runs_from_different_starts(sites, tmp_path, capsys):
    a, b = sites["a"], sites["b"]
    code, _, err = run_main(["merge", a, b, "--method", "average", "-o", tmp_path / "ok"], capsys)
    assert code == 0, err  # two sites fine-tuned from one base: averaged without naming it
    stranger = _site(sites["base"], tmp_path / "stranger", _other_base)
    code, _, err = run_main(["merge", a, stranger, "--method", "average", "-o", tmp_path / "m"], capsys)
    assert code == 2 and "does not share a starting point" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()


def test_refuses_a_run_recording_another_base_run(sites, tmp_path, capsys):
    other = _site(sites["base"], tmp_path / "other_base", _nudge(9))

    def from_other(ck, info):
        _nudge(3)(ck, info)
        info["init_run"] = str(other)

    site = _site(sites["base"], tmp_path / "c", from_other)
    code, _, err = run_main(["merge", sites["a"], site, "--base", sites["base"], "-o", tmp_path / "m"], capsys)
    assert code == 2 and "was fine-tuned from" in err and len(err.strip().splitlines()) == 1


def test_a_base_given_as_a_weights_file_is_checked_against_what_the_runs_record(sites, tmp_path, capsys):
    other = _site(sites["base"], tmp_path / "other_base", _nudge(9))  # close to the base: cosine alone passes it

    def from_base(seed):
        def change(ck, info):
            _nudge(seed)(ck, info)
            info["init_run"] = str(sites["base"])

        return change

    a, b = _site(sites["base"], tmp_path / "a", from_base(3)), _site(sites["base"], tmp_path / "b", from_base(4))
    wrong = other / "checkpoints" / "best.pt"
    code, _, err = run_main(["merge", a, b, "--base", wrong, "-o", tmp_path / "m"], capsys)
    assert code == 2 and "whose weights are not the base" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "m").exists()
    right = sites["base"] / "checkpoints" / "best.pt"  # the recorded base run's own weights file
    code, _, err = run_main(["merge", a, b, "--base", right, "-o", tmp_path / "m"], capsys)
    assert code == 0, err


def test_nonsense_merges_are_refused_and_write_nothing(sites, tmp_path, capsys):
    a, b, base = sites["a"], sites["b"], sites["base"]
    for args, words in (
        ([a, str(a) + "/", "--base", base], "given twice"),
        ([a, b, "--base", base, "--method", "task_arithmetic", "--scale", "1e39"], "inf or NaN"),
        ([a, b, "--method", "bogus"], "unknown merge method 'bogus'"),
    ):
        code, _, err = run_main(["merge", *args, "-o", tmp_path / "m"], capsys)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, (args, err)
        assert not (tmp_path / "m").exists()
        assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".m.")], "staging left behind"


def test_a_merge_into_a_bundle_folder_is_refused(sites, image_run, tmp_path, capsys):
    b = tmp_path / "b"
    shutil.copytree(image_run["bundle"], b)
    code, _, err = run_main(["merge", sites["a"], sites["b"], "--base", sites["base"], "-o", b / "merged"], capsys)
    assert code == 2 and "inside the bundle" in err and not (b / "merged").exists(), err


def test_a_second_merge_into_one_out_is_refused_while_the_first_runs(sites, tmp_path, capsys):
    from lockutil import lock_held_elsewhere

    with lock_held_elsewhere(tmp_path / ".m.merge.lock", tmp_path / "m"):
        code, _, err = run_main(
            ["merge", sites["a"], sites["b"], "--base", sites["base"], "-o", tmp_path / "m"], capsys
        )
    assert code == 2 and "already being merged into by pid" in err, err
    assert not (tmp_path / "m").exists()


def test_merge_command_imports_light():
    import subprocess
    import sys

    code = (
        "import sys; from typer.testing import CliRunner; from medtransfer.shared.cli.main import app; "
        "r = CliRunner().invoke(app, ['merge', '--help']); assert r.exit_code == 0 and '--trim' in r.output, r.output; "
        "print('torch' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "False"


def test_bad_trim_and_missing_base_are_one_line(sites, tmp_path, capsys):
    a, b = sites["a"], sites["b"]
    code, _, err = run_main(["merge", a, b, "--base", sites["base"], "--trim", "0", "-o", tmp_path / "m"], capsys)
    assert code == 2 and "--trim must be in (0, 1]" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_main(["merge", a, b, "--method", "task_arithmetic", "-o", tmp_path / "m"], capsys)
    assert code == 2 and "needs --base" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------- LoRA image runs
@pytest.fixture(scope="module")
def lora_run(image_run, tmp_path_factory):
    from medtransfer.shared.imagetask.task import train

    run = tmp_path_factory.mktemp("lora") / "run"
    ov = ["train.epochs=1", "train.progress=false", "data.size=32", "train.strategy=lora", "train.peft.r=2"]
    train(image_run["manifest"], run, overrides=ov)
    return run


def test_lora_image_run_rebuilds_exports_and_merges(lora_run, tmp_path, capsys):
    import numpy as np
    import onnxruntime as ort

    from medtransfer.shared.imagetask.task import export_run
    from medtransfer.shared.peft import LoRAConv2d, LoRALinear

    # the spec records the LoRA wrapping: load_model rebuilds the very modules the weights belong to
    model, ck = RunDir(lora_run).load_model("best")
    assert ck["model_spec"]["kwargs"]["strategy"] == "lora" and ck["model_spec"]["kwargs"]["peft"]["r"] == 2
    wrapped = [n for n, m in model.named_modules() if isinstance(m, (LoRALinear, LoRAConv2d))]
    assert wrapped and any(k.endswith("lora_a.weight") for k in ck["model"])
    assert all(torch.equal(v, ck["model"][k]) for k, v in model.state_dict().items())
    bundle = export_run(lora_run, tmp_path / "bundle", force=True)  # 1 epoch: below the majority class
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        want = model(x).numpy()
    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    assert np.allclose(sess.run(None, {"image": x.numpy()})[0], want, atol=1e-4)
    # two sites nudged from the LoRA run, merged with it as the base: the LoRA updates are merged dense
    work = tmp_path / "sites"
    a, b = _site(lora_run, work / "a", _nudge(1)), _site(lora_run, work / "b", _nudge(2))
    out = tmp_path / "merged"
    code, _, err = run_main(["merge", a, b, "--base", lora_run, "--method", "ties", "-o", out], capsys)
    assert code == 0, err
    merged, mck = RunDir(out).load_model("best")
    assert mck["merged_from"]["lora"] and mck["model_spec"] == ck["model_spec"]
    assert all(float(v.abs().sum()) == 0.0 for k, v in mck["model"].items() if k.endswith("lora_b.weight"))
    assert (export_run(out, tmp_path / "merged_bundle", force=True) / "model.onnx").is_file()


# ------------------------------------------------------------------------------------ demo section
def test_demo_section_runs_every_declared_scenario(monkeypatch, tmp_path):
    from medtransfer.shared import plugins
    from medtransfer.shared.finetune.merge_demo import demo_section

    def good(out_dir, fast):
        assert fast is True and Path(out_dir) == tmp_path / "merge" / "zz_good"
        rows = {"base": {"s1": {"acc": 0.5, "mae": 2.0}, "s2": {"acc": 0.25, "mae": 4.0}}}
        return {"title": "zz: a scenario", "sites": ["s1", "s2"], "metric": "acc", "rows": rows, "caption": "cap"}

    def bad(out_dir, fast):
        raise ValueError("broken\nscenario")

    specs = {
        "zz_good": plugins.AppSpec(name="zz_good", help="", merge_demo="t:good"),
        "zz_bad": plugins.AppSpec(name="zz_bad", help="", merge_demo="t:bad"),
        "zz_none": plugins.AppSpec(name="zz_none", help=""),
    }
    monkeypatch.setattr(plugins, "discover_apps", lambda: specs)
    monkeypatch.setattr(plugins, "load_object", lambda ref: {"t:good": good, "t:bad": bad}[ref])
    md = demo_section(tmp_path, fast=True)
    assert "### zz: a scenario" in md and "| base | 0.50 / 2.00 | 0.25 / 4.00 | 0.38 / 3.00 |" in md
    assert "![zz_good merge](merge/zz_good_merge.png)" in md and (tmp_path / "merge" / "zz_good_merge.png").is_file()
    assert "not run (ValueError: broken scenario" in md and (tmp_path / "merge" / "zz_bad" / "error.txt").is_file()
    assert "zz_none" not in md
    assert demo_section(tmp_path / "only", fast=True, apps=["zz_bad"]).count("###") == 1
