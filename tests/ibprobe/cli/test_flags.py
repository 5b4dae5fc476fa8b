"""The KID flags: unset ones take the preset's defaults, then KidConfig's; a weights file alone means Inception v3."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from ibprobe.cli import flags
from ibprobe.errors import ConfigError
from ibprobe.estimators.kid import WEIGHTS_FEATURES, KidConfig
from ibprobe.presets import get_preset


def _args(**kw):
    base = dict(no_kid=False, kid_samples=None, kid_features=None, kid_weights=None, seed=3)
    return SimpleNamespace(**{**base, **kw})


def test_unset_kid_flags_take_the_presets_defaults_then_kidconfigs(tmp_path):
    assert flags.kid_config(_args()) == KidConfig(seed=3)
    paper = flags.kid_config(_args(), get_preset("cinic10-paper").kid)
    assert (paper.samples, paper.subset_size, paper.features) == (2000, 1000, "run")
    assert flags.kid_config(_args(kid_samples=64), get_preset("cinic10-paper").kid).samples == 64
    assert flags.kid_config(_args(no_kid=True)) is None


def test_a_weights_file_alone_means_inception_v3(tmp_path):
    w = tmp_path / "inception.pt"
    w.write_bytes(b"")
    cfg = flags.kid_config(_args(kid_weights=str(w)), get_preset("cifar10-paper").kid)
    assert (cfg.features, cfg.weights, cfg.subset_size, cfg.samples) == (WEIGHTS_FEATURES, str(w), 1000, 2000)
    assert flags.kid_config(_args(kid_weights=str(w), kid_features="torchvision:resnet18")).features == \
        "torchvision:resnet18"
    with pytest.raises(ConfigError, match="no such file"):
        flags.kid_config(_args(kid_weights=str(tmp_path / "missing.pt")))
