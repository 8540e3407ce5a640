import copy
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import TensorDataset

from medtransfer.shared.finetune import TRAIN_DEFAULTS, fit, load_checkpoint, weights_digest
from medtransfer.shared.finetune.strategies import param_groups, setup_strategy, stages
from medtransfer.shared.utils.hashing import sha256_file


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(4, 16)
        self.body = nn.Sequential(nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
        self.head = nn.Linear(16, 2)
        self.transfer_head = ["head"]

    def forward(self, x):
        return self.head(self.body(self.stem(x)))


def data(n=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return TensorDataset(x, y)


def acc(out, y):
    return {"accuracy": float((out.argmax(1) == y).mean())}


def cfg(**train):
    return {"train": {**TRAIN_DEFAULTS, "batch_size": 16, "lr": 0.01, "progress": False, **train}}


def test_fit_learns_and_writes_run(tmp_path):
    res = fit(
        Net(),
        data(),
        data(64, 1),
        cfg=cfg(epochs=6, patience=0),
        run_dir=tmp_path,
        app="t",
        task="cls",
        loss_fn=nn.functional.cross_entropy,
        metric_fn=acc,
        monitor="val_accuracy",
        mode="max",
    )
    assert res.best_metrics["val_accuracy"] > 0.85
    for f in ("run.json", "config.yaml", "metrics.csv", "metrics.json", "checkpoints/best.pt", "checkpoints/last.pt"):
        assert (tmp_path / f).is_file(), f
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["train"]["epochs"] == 6
    assert json.loads((tmp_path / "run.json").read_text())["app"] == "t"
    assert len(json.loads((tmp_path / "metrics.json").read_text())) == 6
    assert load_checkpoint(res.best_path)["best"]["epoch"] == res.best_epoch


def test_resume_continues_where_it_stopped(tmp_path):
    def net():
        torch.manual_seed(0)
        return Net()

    full = fit(
        net(),
        data(),
        data(64, 1),
        cfg=cfg(epochs=4, patience=0),
        run_dir=tmp_path / "a",
        app="t",
        task="c",
        loss_fn=nn.functional.cross_entropy,
    )
    calls = {"n": 0}

    def dying_loss(out, y):  # killed during epoch 3 (8 train + 4 val calls per epoch)
        calls["n"] += 1
        if calls["n"] > 2 * 12 + 3:
            raise KeyboardInterrupt
        return nn.functional.cross_entropy(out, y)

    with pytest.raises(KeyboardInterrupt):
        fit(
            net(),
            data(),
            data(64, 1),
            cfg=cfg(epochs=4, patience=0),
            run_dir=tmp_path / "b",
            app="t",
            task="c",
            loss_fn=dying_loss,
        )
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["epoch"] == 1
    resumed = fit(
        net(),
        data(),
        data(64, 1),
        cfg=cfg(epochs=4, patience=0),
        run_dir=tmp_path / "b",
        app="t",
        task="c",
        loss_fn=nn.functional.cross_entropy,
    )
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2, 3]
    digest = [json.loads((tmp_path / r / "run.json").read_text())["initial_weights_sha256"] for r in "ab"]
    assert digest[0] == digest[1]  # the resumed run still names the weights its first process started from
    np.testing.assert_allclose(
        [h["train_loss"] for h in resumed.history], [h["train_loss"] for h in full.history], rtol=1e-5
    )


def test_run_json_names_the_weights_training_started_from(tmp_path):
    def start(seed, out):
        torch.manual_seed(seed)
        net = Net()
        before = weights_digest(net)
        fit(
            net,
            data(32),
            None,
            cfg=cfg(epochs=1),
            run_dir=tmp_path / out,
            app="t",
            task="c",
            loss_fn=nn.functional.cross_entropy,
        )
        assert weights_digest(net) != before  # it trained: the record is of the start, not the end
        return before, json.loads((tmp_path / out / "run.json").read_text())["initial_weights_sha256"]

    a, b, c = start(0, "a"), start(0, "b"), start(1, "c")
    assert a[1] == a[0] and a == b
    assert c[1] == c[0] != a[0]
    net = Net()
    assert weights_digest(copy.deepcopy(net)) == weights_digest(net) != weights_digest(copy.deepcopy(net).half())


def test_resume_refuses_a_folder_trained_with_another_config(tmp_path):
    from medtransfer.shared.utils.errors import ConfigError

    def run(**train):
        torch.manual_seed(0)
        return fit(
            Net(),
            data(),
            data(64, 1),
            cfg=cfg(patience=0, **train),
            run_dir=tmp_path / "r",
            app="t",
            task="c",
            loss_fn=nn.functional.cross_entropy,
        )

    run(epochs=1, seed=0)
    saved = (tmp_path / "r" / "config.yaml").read_text()
    assert len(run(epochs=2, seed=0).history) == 2  # same config, more epochs: resumes
    with pytest.raises(ConfigError, match=r"train.seed: 0 -> 1.*--set train.resume=false"):
        run(epochs=2, seed=1)
    assert (tmp_path / "r" / "config.yaml").read_text() != saved  # the epochs=2 resume rewrote it...
    assert "seed: 0" in (tmp_path / "r" / "config.yaml").read_text()  # ...the refused run did not
    assert len(run(epochs=1, seed=1, resume=False).history) == 1  # starting over is explicit


def test_early_stopping(tmp_path):
    # a monitored metric that never improves after the first epoch (lr=0 is refused by the range checks)
    res = fit(
        Net(),
        data(),
        data(64, 1),
        cfg=cfg(epochs=30, patience=2),
        run_dir=tmp_path,
        app="t",
        task="c",
        loss_fn=nn.functional.cross_entropy,
        metric_fn=lambda o, t: {"const": 1.0},
        monitor="val_const",
        mode="max",
    )
    assert len(res.history) == 3 and res.best_epoch == 0


def test_linear_probe_trains_only_head(tmp_path):
    m = Net()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    fit(
        m,
        data(),
        None,
        cfg=cfg(epochs=1, strategy="linear_probe"),
        run_dir=tmp_path,
        app="t",
        task="c",
        loss_fn=nn.functional.cross_entropy,
    )
    after = m.state_dict()
    assert torch.equal(before["stem.weight"], after["stem.weight"])
    assert not torch.equal(before["head.weight"], after["head.weight"])


def test_llrd_and_gradual_unfreeze_groups():
    m = Net()
    tc = {**TRAIN_DEFAULTS, "strategy": "llrd", "lr": 1.0, "llrd_decay": 0.5}
    setup_strategy(m, tc)
    lrs = {id(p): g["lr"] for g in param_groups(m, tc) for p in g["params"]}
    assert lrs[id(m.head.weight)] == 1.0 and lrs[id(m.body[1].weight)] == 0.5 and lrs[id(m.stem.weight)] == 0.25
    assert [len(s) for s in stages(m)] == [2, 2]
    m2 = Net()
    tc2 = {**TRAIN_DEFAULTS, "strategy": "gradual_unfreeze", "unfreeze_every": 1}
    setup_strategy(m2, tc2)
    from medtransfer.shared.finetune.strategies import unfreeze_for_epoch

    assert not m2.body[1].weight.requires_grad
    unfreeze_for_epoch(m2, 1, tc2)
    assert m2.body[1].weight.requires_grad and not m2.stem.weight.requires_grad
    unfreeze_for_epoch(m2, 2, tc2)
    assert m2.stem.weight.requires_grad


def test_lora_strategy_freezes_base(tmp_path):
    m = Net()
    fit(
        m,
        data(),
        None,
        cfg=cfg(epochs=1, strategy="lora", peft={"targets": ["body.1"], "r": 2}),
        run_dir=tmp_path,
        app="t",
        task="c",
        loss_fn=nn.functional.cross_entropy,
    )
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {"body.1.lora_a.weight", "body.1.lora_b.weight", "head.weight", "head.bias"}


@pytest.mark.slow
def test_runs_under_torchrun_ddp_gloo(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(
        textwrap.dedent(f"""
        import torch
        from torch.utils.data import TensorDataset
        from medtransfer.shared.finetune import TRAIN_DEFAULTS, fit
        torch.manual_seed(0)
        x = torch.randn(64, 4); y = (x[:, 0] > 0).long()
        net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        cfg = {{"train": {{**TRAIN_DEFAULTS, "epochs": 2, "batch_size": 8, "progress": False}}}}
        fit(net, TensorDataset(x, y), TensorDataset(x, y), cfg=cfg, run_dir=r"{tmp_path / "run"}", app="t", task="c",
            loss_fn=torch.nn.functional.cross_entropy)
    """)
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533", str(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["world_size"] == 2
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()


def test_amp_settings_cpu_off_and_cuda_dtype():
    from medtransfer.shared.finetune.engine import amp_settings

    assert amp_settings(True, torch.device("cpu")) == (False, None)
    assert amp_settings(False, torch.device("cuda", 0)) == (False, None)
    if torch.cuda.is_available():
        on, dt = amp_settings(True, torch.device("cuda", 0))
        assert on and dt == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)


def test_step_scheduler_matches_torch_steplr(tmp_path):
    """scheduler=step follows torch's StepLR (DD-SAM2's schedule) epoch by epoch."""
    res = fit(
        Net(),
        data(),
        None,
        cfg=cfg(epochs=5, scheduler="step", step_size=2, gamma=0.5, lr=0.1, patience=0),
        run_dir=tmp_path,
        app="t",
        task="c",
        loss_fn=nn.functional.cross_entropy,
    )
    ref_opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    ref = torch.optim.lr_scheduler.StepLR(ref_opt, step_size=2, gamma=0.5)
    want = []
    for _ in range(5):
        ref_opt.step()
        ref.step()
        want.append(ref_opt.param_groups[0]["lr"])
    assert [round(r["lr"], 10) for r in res.history] == [round(w, 10) for w in want]


def test_one_training_per_run_folder(tmp_path):
    """Two trainings into one --out both wrote its checkpoints, metrics and run.json; the second is now refused in one line naming the first, before it
    writes anything, and the lock dies with its holder."""
    import socket

    from lockutil import lock_held_elsewhere

    from medtransfer.shared.utils.errors import MedTransferError

    run = tmp_path / "run"
    run.mkdir()

    def train():
        return fit(Net(), data(), data(64, 1), cfg=cfg(epochs=1), run_dir=run, app="t", task="c",
                   loss_fn=nn.functional.cross_entropy)  # fmt: skip

    with lock_held_elsewhere(run / ".train.lock") as holder:
        with pytest.raises(MedTransferError) as e:
            train()
        msg = str(e.value)
        assert f"already being trained into by pid {holder.pid} on {socket.gethostname()}" in msg and "\n" not in msg
        assert sorted(p.name for p in run.iterdir()) == [".train.lock"]  # nothing written
    assert train().best_path.is_file() and not (run / ".train.lock").exists()


def test_a_resume_on_other_data_is_refused(tmp_path):
    """`eeg train --manifest tuab.csv --out R`, then `--manifest nmt.csv --out R`: the TUAB checkpoint went
    on training on NMT, its best epoch chosen on another validation set."""
    from medtransfer.shared.utils.errors import ConfigError

    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("path,label\nx.png,0\n")
    b.write_text("path,label\ny.png,1\n")
    kw = dict(app="t", task="c", loss_fn=nn.functional.cross_entropy)
    fit(Net(), data(32), None, cfg=cfg(epochs=1), run_dir=tmp_path / "r", data_files=[a], **kw)
    assert json.loads((tmp_path / "r" / "run.json").read_text())["data_sha256"] == {"a.csv": sha256_file(a)}
    with pytest.raises(ConfigError, match="trained on other data than b.csv"):
        fit(Net(), data(32), None, cfg=cfg(epochs=2), run_dir=tmp_path / "r", data_files=[b], **kw)
    res = fit(Net(), data(32), None, cfg=cfg(epochs=2), run_dir=tmp_path / "r", data_files=[a], **kw)
    assert [h["epoch"] for h in res.history] == [0, 1]  # the same data: resumed


def test_a_fresh_start_into_a_used_folder_keeps_nothing_of_the_earlier_run(tmp_path):
    """Found by a hostile audit: ``train.resume=false`` into a finished run, interrupted, kept the
    earlier run's evaluation in run.json; export then shipped the new weights under the old scores."""
    from medtransfer.shared.rundir import RunDir

    kw = dict(app="t", task="cls", loss_fn=nn.functional.cross_entropy, metric_fn=acc, monitor="val_accuracy")
    fit(Net(), data(), data(64, 1), cfg=cfg(epochs=2, patience=0), run_dir=tmp_path, mode="max", **kw)
    RunDir(tmp_path).update_info(baseline={"beats_baseline": True}, test={"accuracy": 0.95})
    (tmp_path / "summary.json").write_text("{}")
    (tmp_path / "test_metrics.json").write_text("{}")

    class Interrupted(Exception):
        pass

    def boom(out, y):  # the restart stops at its first validation
        raise Interrupted

    with pytest.raises(Interrupted):
        fit(
            Net(),
            data(),
            data(64, 1),
            cfg=cfg(epochs=2, patience=0, resume=False, lr=0.05),
            run_dir=tmp_path,
            mode="max",
            **{**kw, "metric_fn": boom},
        )
    info = json.loads((tmp_path / "run.json").read_text())
    assert "baseline" not in info and "test" not in info  # export now finds no baseline record
    assert not (tmp_path / "summary.json").exists() and not (tmp_path / "test_metrics.json").exists()
    assert not (tmp_path / "checkpoints" / "best.pt").exists()  # the earlier run's weights are gone too
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["train"]["lr"] == 0.05
