"""The paper presets: Figure 1's schedule, both regimes with layers their models have, PixelCNN++'s decoder, and
paired fits that continue at a learning rate a code path can still learn with."""
from __future__ import annotations

import pytest

from ibprobe.config import AnalysisConfig
from ibprobe.models import build_model
from ibprobe.pipeline import preset_configs
from ibprobe.presets import PIXELCNN_STEP_DECAY, get_preset
from ibprobe.tools.plan import jobs_of_preset
from ibprobe.capture import check_layers


@pytest.mark.parametrize("name", ["cifar10-paper", "cinic10-paper"])
def test_paper_presets_take_the_papers_schedule_and_both_regimes(name):
    p = get_preset(name)
    assert p.regimes == ("classify", "autoencode")
    for regime in p.regimes:
        tcfg, acfg = preset_configs(p, regime, AnalysisConfig(device="cpu"))
        assert tcfg.epochs == 200 and tcfg.checkpoint_epochs == (0, 1, 10, 100, 200)  # Figure 1
        model = build_model(tcfg.model, in_shape=(3, 32, 32), num_classes=10, **tcfg.model_args)
        check_layers(model, acfg.layers)  # every preset layer is a tap of its model
        settings = acfg.settings((3, 32, 32), 256)
        d = settings.decoder
        assert (d.nr_resnet, d.nr_filters, d.nr_mix, d.dropout) == (5, 160, 10, 0.5)
        fit = settings.fit
        # the latest q0 can stop is the end of its budget; its continuation must keep most of the learning rate
        worst = settings.stage_fit("q", q0_best_epoch=fit.epochs)
        assert worst.lr >= 0.5 * fit.lr and worst.lr > 1e-4
    ae, _ = preset_configs(p, "autoencode", AnalysisConfig(device="cpu"))
    assert ae.model == "resnet_ae" and ae.model_args["bottleneck_channels"] == 16 and ae.optimizer == "adam"
    assert "bottleneck" in p.layers["autoencode"] and "encoder.layer4" in p.layers["autoencode"]
    assert ae.model_args["widths"] == p.train["model_args"]["widths"]  # the classifier's stages as the encoder


def test_the_per_epoch_decay_is_pixelcnns_per_step_decay_over_an_epoch():
    for name in ("cifar10-paper", "cinic10-paper"):
        job = next(j for j in jobs_of_preset(name, device="cpu", regimes=("classify",)) if j.role == "conditional")
        assert job.fit.lr_decay == pytest.approx(PIXELCNN_STEP_DECAY ** job.steps_per_epoch, abs=1e-4)
