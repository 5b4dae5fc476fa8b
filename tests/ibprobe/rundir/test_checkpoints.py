"""Foreign checkpoints: every format loads into the same weights; hostile or broken files are refused clearly."""
from __future__ import annotations

import json
import os
import pickle
from collections import OrderedDict

import pytest
import torch
from torch import nn

from ibprobe.errors import CheckpointError
from ibprobe.rundir.checkpoints import (apply_state_dict, extract_state_dict, load_checkpoint_file, load_weights,
                                        resolve_checkpoints)


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(3))


def _small(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


class _Lit(nn.Module):  # a Lightning-style wrapper: the net under `model`, plus a loss with a buffer
    def __init__(self, net):
        super().__init__()
        self.model = net
        self.loss = nn.CrossEntropyLoss(weight=torch.ones(3))


def _assert_same(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _formats(sd):
    return {
        "ours": {"model": sd, "optimizer": {"state": {}, "param_groups": []}, "epoch": 3, "step": 30,
                 "config": {"model": "x"}, "metrics": {"acc": 0.5}},
        "raw": sd,
        "model_key": {"model": sd, "note": "hi"},
        "model_state_dict": {"model_state_dict": sd, "epoch": 2},
        "lightning": {"state_dict": OrderedDict(("model." + k, v) for k, v in sd.items()), "epoch": 7,
                      "global_step": 70, "pytorch-lightning_version": "2.0"},
        "ddp": OrderedDict(("module." + k, v) for k, v in sd.items()),
        "ddp_lightning": {"state_dict": {"module.model." + k: v for k, v in sd.items()}},
        "compiled": {"model": {"_orig_mod." + k: v for k, v in sd.items()}},
    }


@pytest.mark.parametrize("fmt", list(_formats({})))
def test_every_format_loads_the_same_weights(tmp_path, fmt):
    src = _small(seed=1)
    obj = _formats(src.state_dict())[fmt]
    path = tmp_path / f"{fmt}.pt"
    torch.save(obj, path)
    dst = _small(seed=2)
    assert not torch.equal(dst[0].weight, src[0].weight)
    meta = load_weights(dst, path)
    _assert_same(src, dst)
    if isinstance(obj, dict) and "epoch" in obj:
        assert meta["epoch"] == obj["epoch"]
    else:
        assert "epoch" not in meta


def test_lightning_module_with_extra_submodules_loads(tmp_path):
    src = _small(seed=1)
    lit = _Lit(src)
    torch.save({"state_dict": lit.state_dict(), "epoch": 4}, tmp_path / "lit.ckpt")
    dst = _small(seed=5)
    assert load_weights(dst, tmp_path / "lit.ckpt")["epoch"] == 4
    _assert_same(src, dst)


def test_prefix_is_not_stripped_unless_all_keys_carry_it():
    sd = {"model.weight": torch.zeros(1), "head.weight": torch.zeros(1)}
    out, meta = extract_state_dict(sd)
    assert set(out) == set(sd) and meta["stripped_prefix"] == ""
    out, meta = extract_state_dict({"state_dict": {"module.model.a": torch.zeros(1), "module.model.b": torch.ones(1)}})
    assert set(out) == {"a", "b"} and meta["stripped_prefix"] == "module.model."


def test_model_whose_own_top_module_is_called_model_still_loads(tmp_path):
    src = _Lit(_small(seed=1))
    src_sd = {k: v for k, v in src.state_dict().items() if k.startswith("model.")}
    wrapper = nn.Module()
    wrapper.model = src.model
    torch.save(src_sd, tmp_path / "w.pt")  # every key starts with "model.", but the model wants them
    dst = nn.Module()
    dst.model = _small(seed=3)
    load_weights(dst, tmp_path / "w.pt")
    _assert_same(wrapper, dst)


def test_no_weights_in_file_is_a_clear_error(tmp_path):
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="found no model weights.*'epoch'"):
        load_weights(_small(), tmp_path / "x.pt")


def test_mismatch_summarises_missing_unexpected_and_shapes(tmp_path):
    sd = _small().state_dict()
    sd["extra.weight"] = torch.zeros(2)
    del sd["1.running_mean"]
    sd["3.weight"] = torch.zeros(3, 10)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as e:
        load_weights(_small(), tmp_path / "bad.pt")
    msg = str(e.value)
    assert "1 missing key(s) (1.running_mean)" in msg
    assert "1 unexpected key(s) (extra.weight)" in msg
    assert "3.weight (3, 10) vs model (3, 144)" in msg
    assert "--model" in msg and "\n" not in msg


def test_many_missing_keys_are_counted_not_listed():
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(10)])
    with pytest.raises(CheckpointError, match=r"20 missing key\(s\) \(0.weight, 0.bias, 1.weight, ... 17 more\)"):
        apply_state_dict(model, {"x": torch.zeros(1)})


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint: .*nope.pt"):
        load_checkpoint_file(tmp_path / "nope.pt")


@pytest.mark.parametrize("content", [b"", b"hello, not a torch file", "truncated"])
def test_corrupt_files_name_the_path(tmp_path, content):
    path = tmp_path / "broken.pt"
    if content == "truncated":
        torch.save(_small().state_dict(), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=f"{path}.*corrupt"):
        load_checkpoint_file(path)


class _Payload:
    """Unpickling this would create a file: the attack weights_only must stop."""

    target = ""

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("how", ["torch", "pickle2", "pickle_default"])
def test_pickle_payload_is_refused_and_not_executed(tmp_path, how):
    target = tmp_path / "PWNED"
    _Payload.target = str(target)
    path = tmp_path / "evil.pt"
    if how == "torch":
        torch.save({"model": _small().state_dict(), "hook": _Payload()}, path)
    else:
        with open(path, "wb") as f:
            pickle.dump({"state_dict": _Payload()}, f, protocol=2 if how == "pickle2" else None)
    assert not target.exists()
    with pytest.raises(CheckpointError) as e:
        load_checkpoint_file(path)
    assert not target.exists()
    msg = str(e.value)
    assert "refused" in msg and "nothing in it was executed" in msg and "state_dict()" in msg
    if how != "pickle_default":  # (torch cannot parse protocol-4 frames far enough to name the global)
        assert "open" in msg  # names what the file asked for


def test_resolve_epochs_from_key_then_name_then_order(tmp_path):
    """A foreign checkpoint without a step is keyed by its epoch number, which stands for its step too."""
    sd = _small().state_dict()
    torch.save({"model": sd, "epoch": 5}, tmp_path / "a.pt")  # key wins over name
    torch.save(sd, tmp_path / "ckpt_e2_step10.pt")  # last number
    got = resolve_checkpoints([str(tmp_path / "*.pt")])
    assert [(s, e, p.name) for s, e, p in got] == [(5, 5.0, "a.pt"), (10, 10.0, "ckpt_e2_step10.pt")]

    d = tmp_path / "order"
    d.mkdir()
    for name in ("first.pt", "second.pt", "third.pt"):
        torch.save(sd, d / name)
    got = resolve_checkpoints([str(d / "*.pt"), str(d / "first.pt")])  # duplicates dropped
    assert [(s, e, p.name) for s, e, p in got] == [(0, 0.0, "first.pt"), (1, 1.0, "second.pt"), (2, 2.0, "third.pt")]


def test_resolve_ours_by_step_with_fractional_epochs(tmp_path):
    """Our checkpoints hold their step and fractional epoch (older ones an integer epoch): keyed by step, in step
    order, whatever their names; mixed with files that hold no step, they are refused in one line."""
    sd = _small().state_dict()
    torch.save({"model": sd, "epoch": 3, "step": 69}, tmp_path / "epoch_0003.pt")  # an older run's
    torch.save({"model": sd, "epoch": 9 / 23, "step": 9}, tmp_path / "step_00000009.pt")
    torch.save({"model": sd, "epoch": 0.0, "step": 0}, tmp_path / "zzz.pt")
    got = resolve_checkpoints([str(tmp_path / "*.pt")])
    assert [(s, e, p.name) for s, e, p in got] == [(0, 0.0, "zzz.pt"), (9, pytest.approx(9 / 23), "step_00000009.pt"),
                                                   (69, 3.0, "epoch_0003.pt")]
    torch.save({"model": sd, "epoch": 2}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="holds its training step and .*foreign.pt does not") as e:
        resolve_checkpoints([str(tmp_path / "*.pt")])
    assert "\n" not in str(e.value)
    os.remove(tmp_path / "foreign.pt")
    torch.save({"model": sd, "epoch": 0.5, "step": 9}, tmp_path / "again.pt")
    with pytest.raises(CheckpointError, match="both are step 9"):
        resolve_checkpoints([str(tmp_path / "*.pt")])


def test_run_folder_checkpoints_by_step_and_of_older_runs_by_epoch(tmp_path):
    """A run folder lists step_*.pt by the step in the name (its epoch from config.json's steps_per_epoch); an older
    run's epoch_*.pt by the step inside each file and the epoch in its name."""
    from ibprobe.rundir.checkpoints import list_checkpoints, run_checkpoints

    sd = _small().state_dict()
    new, old = tmp_path / "new", tmp_path / "old"
    for run, spe in ((new, 23), (old, None)):
        (run / "checkpoints").mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"model": "resnet", **({"steps_per_epoch": spe} if spe else {})}))
    for step in (0, 9, 690):
        torch.save({"model": sd, "config": {"model": "resnet"}, "step": step, "epoch": step / 23},
                   new / "checkpoints" / f"step_{step:08d}.pt")
    for epoch in (0, 1, 8):
        torch.save({"model": sd, "config": {"model": "resnet"}, "step": 5 * epoch, "epoch": epoch},
                   old / "checkpoints" / f"epoch_{epoch:04d}.pt")
    (new / "checkpoints" / "last.pt").write_bytes(b"not listed")
    assert [s for s, _ in list_checkpoints(new)] == [0, 9, 690]
    assert [(s, e) for s, e, _ in run_checkpoints(new)] == [(0, 0.0), (9, 9 / 23), (690, 30.0)]
    assert [(s, e, p.name) for s, e, p in run_checkpoints(old)] == [
        (0, 0.0, "epoch_0000.pt"), (5, 1.0, "epoch_0001.pt"), (40, 8.0, "epoch_0008.pt")]


def test_resolve_errors(tmp_path):
    sd = _small().state_dict()
    with pytest.raises(CheckpointError, match="no checkpoint file matched .*\\*.pt"):
        resolve_checkpoints([str(tmp_path / "*.pt")])
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        resolve_checkpoints([str(tmp_path / "x.pt")])
    torch.save(sd, tmp_path / "epoch_3.pt")
    torch.save({"model": sd, "epoch": 3}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="both are epoch 3"):
        resolve_checkpoints([str(tmp_path / "*.pt")])
    os.remove(tmp_path / "other.pt")
    torch.save(sd, tmp_path / "final.pt")
    with pytest.raises(CheckpointError, match="cannot tell the epoch of .*final.pt"):
        resolve_checkpoints([str(tmp_path / "*.pt")])


def test_a_checkpoint_of_a_run_that_diverged_is_named(tmp_path):
    """NaN weights (or an infinite parameter) are refused at loading, naming the file and the tensor; which of
    several files holds no weights is named too."""
    sd = _small().state_dict()
    sd["3.weight"] = torch.full_like(sd["3.weight"], float("nan"))
    torch.save(sd, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=r"checkpoint .*nan.pt holds NaN or infinite weights \(3.weight\)"):
        load_weights(_small(), tmp_path / "nan.pt")
    torch.save([sd], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"found no model weights in checkpoint .*list.pt.*holds a list"):
        load_weights(_small(), tmp_path / "list.pt")
