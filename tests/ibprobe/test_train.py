"""Training runs: checkpoint schedule and format, determinism, exact resume after a kill, the CLI's reuse of config."""
from __future__ import annotations

import json
import os

import pytest
import torch

from ibprobe.cli import main
from ibprobe.config import TrainConfig, default_checkpoint_epochs
from ibprobe.errors import CheckpointError, ConfigError
from ibprobe.rundir.checkpoints import list_checkpoints, load_run_model
from ibprobe.train import train

TINY = dict(dataset="digits", model_args={"widths": (4, 8)}, max_train=160, batch_size=32, lr=0.05,
            test_fraction=0.05)


class Killed(Exception):
    pass


def _weights(run_dir, epoch):
    return torch.load(run_dir / "checkpoints" / f"epoch_{epoch:04d}.pt", weights_only=True)["model"]


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_default_schedule_is_log_spaced_with_init_and_last():
    assert default_checkpoint_epochs(8) == (0, 1, 2, 4, 8)
    assert default_checkpoint_epochs(10) == (0, 1, 2, 4, 8, 10)
    assert default_checkpoint_epochs(0) == (0,)
    with pytest.raises(ConfigError):
        TrainConfig(epochs=3, checkpoint_epochs=(0, 5))


def test_checkpoints_on_schedule_load_weights_only(tmp_path):
    cfg = TrainConfig(epochs=3, checkpoint_epochs=(0, 1, 3), **TINY)
    run = train(cfg, tmp_path / "run", device="cpu", progress=False)
    assert [e for e, _ in list_checkpoints(run)] == [0, 1, 3]
    ck = torch.load(run / "checkpoints" / "epoch_0003.pt", weights_only=True)
    assert {"model", "optimizer", "epoch", "step", "config", "rng", "metrics"} <= set(ck)
    assert ck["epoch"] == 3 and ck["step"] == 3 * 5  # 160 images / 32 per batch
    conf = ck["config"]
    assert conf["in_shape"] == [1, 8, 8] and conf["num_classes"] == 10 and conf["levels"] == 17
    assert conf["dataset_spec"]["name"] == "digits" and conf["regime"] == "classify"
    assert json.loads((run / "config.json").read_text())["model_args"] == {"widths": [4, 8]}
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [0, 1, 2, 3]
    assert {"train_loss", "test_loss", "train_acc", "test_acc", "seconds"} <= set(lines[1])
    model, ck0 = load_run_model(run / "checkpoints" / "epoch_0000.pt")
    assert not model.training and ck0["epoch"] == 0
    # epoch 0 is the initialisation: differs from the trained weights
    assert not _same(_weights(run, 0), _weights(run, 3))
    assert ck["metrics"]["test_acc"] > lines[0]["test_acc"]


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    cfg = TrainConfig(epochs=1, checkpoint_epochs=(1,), **TINY)
    a = train(cfg, tmp_path / "a", device="cpu", progress=False)
    b = train(cfg, tmp_path / "b", device="cpu", progress=False)
    c = train(TrainConfig(epochs=1, checkpoint_epochs=(1,), seed=1, **TINY), tmp_path / "c", device="cpu",
              progress=False)
    assert _same(_weights(a, 1), _weights(b, 1))
    assert not _same(_weights(a, 1), _weights(c, 1))


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
    assert [e for e, _ in list_checkpoints(tmp_path / "resumed")][-1] == kill_after
    resumed = train(cfg, tmp_path / "resumed", device="cpu", progress=False)
    for e in (0, 1, 2, 3):
        assert _same(_weights(full, e), _weights(resumed, e))
    a = torch.load(full / "checkpoints" / "epoch_0003.pt", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "epoch_0003.pt", weights_only=True)
    assert a["step"] == b["step"] and torch.equal(a["rng"]["data"], b["rng"]["data"])
    ma = [json.loads(l) for l in (full / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(l) for l in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [m["test_loss"] for m in ma] == [m["test_loss"] for m in mb]


def test_finished_run_rerun_does_nothing_and_other_config_is_refused(tmp_path):
    cfg = TrainConfig(epochs=1, **TINY)
    run = train(cfg, tmp_path / "r", device="cpu", progress=False)
    stamp = os.stat(run / "checkpoints" / "epoch_0001.pt").st_mtime_ns
    train(cfg, run, device="cpu", progress=False)
    assert os.stat(run / "checkpoints" / "epoch_0001.pt").st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="seed"):
        train(TrainConfig(epochs=1, seed=5, **TINY), run, device="cpu", progress=False)


def test_cli_reuses_config_json_and_refuses_conflicts(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["train", "--out", str(out), "--dataset", "digits", "--model-arg", "widths=4,8", "--train", "max_train=64",
            "epochs=1", "checkpoint_epochs=0,1", "--quiet", "--device", "cpu"]
    assert main(args) == 0
    stamp = os.stat(out / "checkpoints" / "epoch_0001.pt").st_mtime_ns
    assert main(["train", "--out", str(out), "--quiet"]) == 0  # no flags: the stored run, already finished
    assert os.stat(out / "checkpoints" / "epoch_0001.pt").st_mtime_ns == stamp
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
    model, _ = load_run_model(run / "checkpoints" / "epoch_0003.pt")
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
