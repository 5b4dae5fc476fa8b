"""Training runs: checkpoint schedules (epochs, steps, log-spaced) and format, determinism, exact resume after a kill
(at an epoch's end or inside one), the CLI's reuse of config."""
from __future__ import annotations

import json
import os

import pytest
import torch

from ibprobe.cli import main
from ibprobe.config import TrainConfig, default_checkpoint_epochs, log_steps
from ibprobe.errors import CheckpointError, ConfigError
from ibprobe.rundir.checkpoints import list_checkpoints, load_run_model, run_checkpoints
from ibprobe.rundir.paths import RunDir
from ibprobe.train import train

TINY = dict(dataset="digits", model_args={"widths": (4, 8)}, max_train=160, batch_size=32, lr=0.05,
            test_fraction=0.05)


class Killed(Exception):
    pass


def _weights(run_dir, step):
    return torch.load(RunDir(run_dir).checkpoint(step), weights_only=True)["model"]


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_default_schedule_is_log_spaced_with_init_and_last():
    assert default_checkpoint_epochs(8) == (0, 1, 2, 4, 8)
    assert default_checkpoint_epochs(10) == (0, 1, 2, 4, 8, 10)
    assert default_checkpoint_epochs(0) == (0,)
    with pytest.raises(ConfigError):
        TrainConfig(epochs=3, checkpoint_epochs=(0, 5))


def test_log_schedule_is_distinct_log_spaced_steps_with_init_and_last():
    for n, last in [(8, 690), (8, 69), (5, 10**6), (20, 30), (3, 2)]:
        steps = log_steps(n, last)
        assert len(steps) == min(n, last + 1) and steps[0] == 0 and steps[-1] == last
        assert all(a < b for a, b in zip(steps, steps[1:]))
    ratios = [b / a for a, b in zip(log_steps(8, 10**6)[1:], log_steps(8, 10**6)[2:])]
    assert max(ratios) / min(ratios) < 1.05  # geometric where rounding does not bite
    assert log_steps(5, 3) == (0, 1, 2, 3)  # fewer steps than asked: every step
    assert TrainConfig(epochs=30, checkpoint_schedule="log:8").schedule_steps(23) == log_steps(8, 690)
    assert TrainConfig(epochs=3, checkpoint_epochs=(0, 1), checkpoint_steps=(2,)).schedule_steps(5) == (0, 2, 5)
    for bad, needle in [(dict(checkpoint_schedule="log:1"), "N >= 2"), (dict(checkpoint_schedule="lin:4"), "log:N"),
                        (dict(checkpoint_schedule="log:4", checkpoint_epochs=(0,)), "drop checkpoint_epochs"),
                        (dict(checkpoint_schedule="epochs", checkpoint_steps=(3,)), "drop checkpoint_steps"),
                        (dict(checkpoint_steps=(-1,)), ">= 0")]:
        with pytest.raises(ConfigError, match=needle):
            TrainConfig(**bad)
    with pytest.raises(ConfigError, match="beyond the run's last step 15"):
        TrainConfig(epochs=3, checkpoint_steps=(0, 16)).schedule_steps(5)


def test_cli_log_schedule_sees_the_first_epoch(tmp_path):
    """The acceptance of issue 22: log:8 writes 8 checkpoints on digits, step 0 and at least 3 inside epoch 1."""
    out = tmp_path / "log"
    assert main(["train", "--out", str(out), "--dataset", "digits", "--model-arg", "widths=4,8", "--train", "epochs=3",
                 "checkpoint_schedule=log:8", "--quiet", "--device", "cpu"]) == 0
    found = run_checkpoints(out)
    spe = json.loads((out / "config.json").read_text())["steps_per_epoch"]
    assert spe == 23 and len(found) == 8 and found[0][:2] == (0, 0.0) and found[-1][:2] == (69, 3.0)
    assert sum(1 for _, epoch, _ in found if 0 < epoch < 1) >= 3
    for step, epoch, path in found:
        ck = torch.load(path, weights_only=True)
        assert path == RunDir(out).checkpoint(step) and path.name == f"step_{step:08d}.pt"
        assert ck["step"] == step and ck["epoch"] == pytest.approx(step / 23) == epoch
        assert "test_loss" in ck["metrics"] and ck["metrics"]["step"] == step


def test_a_schedule_beyond_the_run_binds_nothing(tmp_path):
    with pytest.raises(ConfigError, match="beyond the run's last step"):
        train(TrainConfig(epochs=1, checkpoint_steps=(0, 99), **TINY), tmp_path / "r", device="cpu", progress=False)
    assert not (tmp_path / "r" / "config.json").exists()


def test_checkpoints_on_schedule_load_weights_only(tmp_path):
    cfg = TrainConfig(epochs=3, checkpoint_epochs=(0, 1, 3), **TINY)
    run = train(cfg, tmp_path / "run", device="cpu", progress=False)
    assert [s for s, _ in list_checkpoints(run)] == [0, 5, 15]  # 160 images / 32 per batch: 5 steps an epoch
    ck = torch.load(run / "checkpoints" / "step_00000015.pt", weights_only=True)
    assert {"model", "optimizer", "epoch", "step", "steps_per_epoch", "config", "rng", "metrics"} <= set(ck)
    assert ck["epoch"] == 3.0 and ck["step"] == 3 * 5 and ck["steps_per_epoch"] == 5
    conf = ck["config"]
    assert conf["in_shape"] == [1, 8, 8] and conf["num_classes"] == 10 and conf["levels"] == 17
    assert conf["dataset_spec"]["name"] == "digits" and conf["regime"] == "classify"
    assert json.loads((run / "config.json").read_text())["model_args"] == {"widths": [4, 8]}
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(m["epoch"], m["step"]) for m in lines] == [(0, 0), (1, 5), (2, 10), (3, 15)]
    assert {"train_loss", "test_loss", "train_acc", "test_acc", "seconds"} <= set(lines[1])
    model, ck0 = load_run_model(run / "checkpoints" / "step_00000000.pt")
    assert not model.training and ck0["epoch"] == 0 and ck0["step"] == 0
    # step 0 is the initialisation: differs from the trained weights
    assert not _same(_weights(run, 0), _weights(run, 15))
    assert ck["metrics"]["test_acc"] > lines[0]["test_acc"]


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    cfg = TrainConfig(epochs=1, checkpoint_epochs=(1,), **TINY)
    a = train(cfg, tmp_path / "a", device="cpu", progress=False)
    b = train(cfg, tmp_path / "b", device="cpu", progress=False)
    c = train(TrainConfig(epochs=1, checkpoint_epochs=(1,), seed=1, **TINY), tmp_path / "c", device="cpu",
              progress=False)
    assert _same(_weights(a, 5), _weights(b, 5))
    assert not _same(_weights(a, 5), _weights(c, 5))


def test_killed_and_resumed_equals_uninterrupted(tmp_path):
    kill_after = 1
    cfg = TrainConfig(epochs=3, checkpoint_epochs=(0, 1, 2, 3), augment="crop_flip", optimizer="adam", lr=3e-3,
                      **{k: v for k, v in TINY.items() if k != "lr"})
    full = train(cfg, tmp_path / "full", device="cpu", progress=False)

    def die(epoch):
        if epoch == kill_after:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, tmp_path / "resumed", _after_epoch=die, device="cpu", progress=False)
    assert [s for s, _ in list_checkpoints(tmp_path / "resumed")][-1] == kill_after * 5
    resumed = train(cfg, tmp_path / "resumed", device="cpu", progress=False)
    for s in (0, 5, 10, 15):
        assert _same(_weights(full, s), _weights(resumed, s))
    a = torch.load(full / "checkpoints" / "step_00000015.pt", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "step_00000015.pt", weights_only=True)
    assert a["step"] == b["step"] and torch.equal(a["rng"]["data"], b["rng"]["data"])
    ma = [json.loads(l) for l in (full / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(l) for l in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [m["test_loss"] for m in ma] == [m["test_loss"] for m in mb]


def test_killed_inside_an_epoch_and_resumed_equals_uninterrupted(tmp_path):
    """Checkpoints inside an epoch are not resume points: a run killed after one replays that epoch from its start
    (last.pt) and ends, on a CPU, with the same checkpoints and weights as a run never killed; the checkpoints the
    killed process wrote are kept as they are."""
    cfg = TrainConfig(epochs=3, checkpoint_steps=(0, 2, 3, 5, 7, 12, 15), augment="crop_flip", optimizer="adam",
                      lr=3e-3, **{k: v for k, v in TINY.items() if k != "lr"})
    full = train(cfg, tmp_path / "full", device="cpu", progress=False)
    assert [s for s, _ in list_checkpoints(full)] == [0, 2, 3, 5, 7, 12, 15]

    def die(step):
        if step == 7:  # inside the second epoch (steps 6-10)
            raise Killed

    with pytest.raises(Killed):
        train(cfg, tmp_path / "resumed", _after_checkpoint=die, device="cpu", progress=False)
    killed = RunDir(tmp_path / "resumed")
    assert [s for s, _ in list_checkpoints(killed.root)] == [0, 2, 3, 5, 7]
    assert torch.load(killed.last_checkpoint, weights_only=True)["step"] == 5  # the resume point: epoch 1's end
    stamp = os.stat(killed.checkpoint(7)).st_mtime_ns
    resumed = train(cfg, killed.root, device="cpu", progress=False)
    assert os.stat(killed.checkpoint(7)).st_mtime_ns == stamp
    for s in (0, 2, 3, 5, 7, 12, 15):
        a = torch.load(RunDir(full).checkpoint(s), weights_only=True)
        b = torch.load(RunDir(resumed).checkpoint(s), weights_only=True)
        timeless = [{k: v for k, v in m.items() if k != "seconds"} for m in (a["metrics"], b["metrics"])]
        assert _same(a["model"], b["model"]) and timeless[0] == timeless[1] and a["epoch"] == b["epoch"] == s / 5
        assert torch.equal(a["rng"]["data"], b["rng"]["data"])
    mid = torch.load(RunDir(full).checkpoint(7), weights_only=True)["metrics"]
    assert mid["step"] == 7 and mid["epoch"] == 1.4 and {"test_loss", "test_acc"} <= set(mid)


def test_finished_run_rerun_does_nothing_and_other_config_is_refused(tmp_path):
    cfg = TrainConfig(epochs=1, **TINY)
    run = train(cfg, tmp_path / "r", device="cpu", progress=False)
    stamp = os.stat(RunDir(run).checkpoint(5)).st_mtime_ns
    train(cfg, run, device="cpu", progress=False)
    assert os.stat(RunDir(run).checkpoint(5)).st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="seed"):
        train(TrainConfig(epochs=1, seed=5, **TINY), run, device="cpu", progress=False)


def test_cli_reuses_config_json_and_refuses_conflicts(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["train", "--out", str(out), "--dataset", "digits", "--model-arg", "widths=4,8", "--train", "max_train=64",
            "epochs=1", "checkpoint_epochs=0,1", "--quiet", "--device", "cpu"]
    assert main(args) == 0
    last = list_checkpoints(out)[-1][1]  # 64 images, 64 per batch: step 1
    assert last.name == "step_00000001.pt"
    stamp = os.stat(last).st_mtime_ns
    assert main(["train", "--out", str(out), "--quiet"]) == 0  # no flags: the stored run, already finished
    assert os.stat(last).st_mtime_ns == stamp
    assert main(["train", "--out", str(out), "--train", "epochs=1", "--quiet"]) == 0  # agreeing setting is fine
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--train", "lr=0.5", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "different lr" in err and len(err.strip().splitlines()) == 1
    assert main(["train", "--out", str(out), "--seed", "3", "--train", "seed=3", "--quiet"]) == 2
    assert "given twice" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "x"), "--model-arg", "bogus=1", "--quiet"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_autoencoder_reconstruction_loss_falls(tmp_path):
    cfg = TrainConfig(regime="autoencode", model="resnet_ae", epochs=3, optimizer="adam", lr=3e-3,
                      checkpoint_epochs=(0, 3), **{k: v for k, v in TINY.items() if k != "lr"})
    run = train(cfg, tmp_path / "ae", device="cpu", progress=False)
    losses = [json.loads(l)["test_loss"] for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.7 * losses[0]
    assert "test_acc" not in json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    model, _ = load_run_model(list_checkpoints(run)[-1][1])
    assert type(model).__name__ == "ResNetAutoencoder"


def test_load_run_model_errors_are_clear(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_run_model(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_run_model(tmp_path / "bad.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an ibprobe"):
        load_run_model(tmp_path / "foreign.pt")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"model": Evil(), "config": {}}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused.*nothing in it was executed"):
        load_run_model(tmp_path / "evil.pt")


def test_regime_and_model_must_agree():
    from ibprobe.errors import ConfigError

    with pytest.raises(ConfigError, match="resnet_ae"):
        TrainConfig(model="resnet", regime="autoencode")
    with pytest.raises(ConfigError, match="resnet_ae"):
        TrainConfig(model="rir", regime="autoencode")
    with pytest.raises(ConfigError, match="autoencoder"):
        TrainConfig(model="resnet_ae", regime="classify")
    assert TrainConfig(model="resnet_ae", regime="autoencode").model == "resnet_ae"


def test_the_digits_preset_checkpoints_the_first_epoch_in_both_regimes():
    """The digits preset sees the first stage: 8 log-spaced checkpoints, step 0 and 3 inside epoch 1, for classify
    and autoencode alike; a user's own placement of checkpoints replaces the preset's as a whole."""
    from ibprobe.data import load_dataset
    from ibprobe.pipeline import preset_configs

    for regime in ("classify", "autoencode"):
        tcfg, _ = preset_configs("digits", regime)
        spe = tcfg.steps_per_epoch(len(load_dataset(**tcfg.dataset_spec()).train_idx))
        steps = tcfg.schedule_steps(spe)
        assert tcfg.regime == regime and len(steps) == 8 and steps[0] == 0 and steps[-1] == tcfg.epochs * spe
        assert sum(1 for s in steps if 0 < s < spe) >= 3
    mine, _ = preset_configs("digits", "classify", train_overrides={"checkpoint_epochs": (0, 30)})
    assert mine.checkpoint_schedule is None and mine.schedule_steps(23) == (0, 690)
