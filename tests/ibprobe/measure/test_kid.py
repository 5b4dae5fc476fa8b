"""KID's feature network on a run folder: a user's Inception v3 from local weights, fed as its ImageNet weights
expect. (KID end to end on a run folder: tests/ibprobe/test_estimators_run.py.)"""
from __future__ import annotations

import numpy as np
import torch

from ibprobe.estimators.kid import KidConfig
from ibprobe.measure.kid import run_features
from ibprobe.models import build_model
from ibprobe.rundir.sources import NORMALIZE_PRESETS


def test_inception_features_are_its_pooled_2048(tmp_path):
    torch.manual_seed(0)
    net = build_model("torchvision:inception_v3", in_shape=(3, 299, 299), num_classes=10, init_weights=False)
    torch.save(net.state_dict(), tmp_path / "inception.pt")
    cfg = KidConfig(features="torchvision:inception_v3", weights=str(tmp_path / "inception.pt"))
    feat = run_features(None, (1, 8, 8), cfg)  # grey 8x8 digits: resized to 299, repeated to RGB
    assert feat.name == "torchvision:inception_v3:dropout" and feat.input_size == 299
    assert feat.model.transform_input and feat.normalize == NORMALIZE_PRESETS["imagenet"]
    f = feat.features(np.random.default_rng(0).integers(0, 17, size=(2, 1, 8, 8), dtype=np.uint8), levels=17)
    assert f.shape == (2, 2048) and np.isfinite(f).all() and f.min() >= 0  # after the ReLUs and the average pool
