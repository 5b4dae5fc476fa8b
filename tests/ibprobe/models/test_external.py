"""build_external: torchvision classifiers (no downloads, adapted channels) and the user's module:callable."""
from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from ibprobe.errors import ConfigError
from ibprobe.models.external import adapt_input_channels, build_external
from tests.helpers import FIXTURES


@pytest.fixture
def in_fixtures(monkeypatch):
    monkeypatch.chdir(FIXTURES)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(FIXTURES))])
    yield
    sys.modules.pop("byo_nets", None)


def test_user_module_callable_gets_model_args_and_declared_shape_args(in_fixtures):
    m = build_external("byo_nets:TinyNet", in_shape=(1, 8, 8), num_classes=7, width=3)
    assert m.conv1.in_channels == 1 and m.conv1.out_channels == 3
    assert m.fc.out_features == 7
    assert m(torch.zeros(2, 1, 8, 8)).shape == (2, 7)
    # an explicit model arg wins over what ibprobe would fill in
    m = build_external("byo_nets:TinyNet", in_shape=(1, 8, 8), num_classes=7, in_channels=2)
    assert m.conv1.in_channels == 2


def test_user_callable_without_shape_params_gets_only_model_args(in_fixtures):
    m = build_external("byo_nets:make_mlp", in_shape=(3, 4, 4), num_classes=5, hidden=6, depth=2)
    assert isinstance(m, nn.Sequential)
    assert m(torch.zeros(2, 3, 4, 4)).shape == (2, 10)  # num_classes was not passed: make_mlp has no such param


def test_user_file_path_spec(in_fixtures):
    m = build_external(str(FIXTURES / "byo_nets.py") + ":TinyNet", in_shape=(3, 8, 8), num_classes=4)
    assert m.fc.out_features == 4


def test_user_spec_errors(in_fixtures, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="returned a str, not a torch.nn.Module"):
        build_external("byo_nets:not_a_model", in_shape=(3, 8, 8), num_classes=10)
    with pytest.raises(ConfigError, match="has no callable 'TinyNett'.*did you mean TinyNet"):
        build_external("byo_nets:TinyNett", in_shape=(3, 8, 8), num_classes=10)
    with pytest.raises(ConfigError, match="could not be called with .*bogus"):
        build_external("byo_nets:TinyNet", in_shape=(3, 8, 8), num_classes=10, bogus=1)
    with pytest.raises(ConfigError, match="could not import 'no_such_mod_xyz'.*ModuleNotFoundError"):
        build_external("no_such_mod_xyz:Net", in_shape=(3, 8, 8), num_classes=10)
    (tmp_path / "broken_mod_xyz.py").write_text("import torch\nraise RuntimeError('boom at import')\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="could not import 'broken_mod_xyz'.*RuntimeError: boom at import"):
        build_external("broken_mod_xyz:Net", in_shape=(3, 8, 8), num_classes=10)
    with pytest.raises(ConfigError, match="must be 'torchvision:NAME' or 'package.module:callable'"):
        build_external("nocolon:", in_shape=(3, 8, 8), num_classes=10)


def test_torchvision_resnet18_small_rgb_and_gray():
    m = build_external("torchvision:resnet18", in_shape=(3, 32, 32), num_classes=10)
    assert m.fc.out_features == 10 and m.conv1.in_channels == 3
    with torch.no_grad():
        assert m.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 10)
        g = build_external("torchvision:resnet18", in_shape=(1, 8, 8), num_classes=4).eval()
        assert g.conv1.in_channels == 1 and g.conv1.out_channels == 64
        assert (g.conv1.kernel_size, g.conv1.stride, g.conv1.padding) == ((7, 7), (2, 2), (3, 3))
        assert g(torch.rand(2, 1, 8, 8)).shape == (2, 4)


def test_torchvision_model_args_and_no_download():
    m = build_external("torchvision:resnet18", in_shape=(3, 32, 32), num_classes=10, zero_init_residual=True)
    assert torch.count_nonzero(m.layer1[0].bn2.weight) == 0
    with pytest.raises(ConfigError, match="never downloaded"):
        build_external("torchvision:resnet18", in_shape=(3, 32, 32), num_classes=10, weights="DEFAULT")
    with pytest.raises(ConfigError, match="rejected the model arguments"):
        build_external("torchvision:resnet18", in_shape=(3, 32, 32), num_classes=10, bogus=3)


def test_torchvision_unknown_names():
    with pytest.raises(ConfigError, match="not a torchvision model; did you mean .*resnet18"):
        build_external("torchvision:resnet81", in_shape=(3, 32, 32), num_classes=10)
    with pytest.raises(ConfigError, match="fasterrcnn_resnet50_fpn is not a classification model"):
        build_external("torchvision:fasterrcnn_resnet50_fpn", in_shape=(3, 32, 32), num_classes=10)


def test_adapt_input_channels_replaces_first_conv_in_a_sequential():
    net = nn.Sequential(nn.Sequential(nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=False)), nn.Conv2d(5, 5, 1))
    assert adapt_input_channels(net, 2) == "0.0"
    conv = net[0][0]
    assert conv.in_channels == 2 and conv.out_channels == 5 and conv.bias is None and conv.stride == (2, 2)
    with pytest.raises(ConfigError, match="no 3-channel first Conv2d"):
        adapt_input_channels(nn.Sequential(nn.Linear(3, 3)), 1)


# ------------------------------------------------------------------------------------------------ --model-arg typing
def test_model_args_are_parsed_once_as_their_parameters_need(in_fixtures, tmp_path, monkeypatch):
    """Against the annotations where the callable has them, else its defaults' types; text for a str parameter."""
    from ibprobe.models import parse_model_args

    (tmp_path / "typed_nets.py").write_text(
        "from typing import Optional, Sequence\nimport torch.nn as nn\n"
        "def net(width: int, scale: float = 1.0, name: str = 'a', sizes: Sequence[int] = (1,),\n"
        "        drop: Optional[float] = None, flag=False, depth=2, anything=None):\n"
        "    return nn.Identity()\n")
    monkeypatch.chdir(tmp_path)
    got = parse_model_args("typed_nets:net", {"width": "8", "scale": "2", "name": "1e3", "sizes": "3,4",
                                              "drop": "none", "flag": "yes", "depth": "3", "anything": "1,x"})
    assert got == {"width": 8, "scale": 2.0, "name": "1e3", "sizes": (3, 4), "drop": None, "flag": True,
                   "depth": 3, "anything": (1, "x")}
    for texts, match in [({"width": "abc"}, "--model-arg width must be an integer, got 'abc'"),
                         ({"width": "1.5"}, "--model-arg width must be an integer"),
                         ({"scale": "nan"}, "--model-arg scale must be a finite number"),
                         ({"sizes": "3,x"}, "--model-arg sizes must be a comma list of integers, got '3,x'"),
                         ({"num_classes": "abc"}, "--model-arg num_classes must be an integer"),
                         ({"num_classes": "0"}, "--model-arg num_classes must be an integer >= 1"),
                         ({"widht": "8"}, "--model-arg widht: model typed_nets:net has no parameter 'widht'; it "
                                          "takes width, scale")]:
        with pytest.raises(ConfigError, match=match):
            parse_model_args("typed_nets:net", texts)


def test_our_models_and_torchvision_type_their_model_args():
    from ibprobe.models import parse_model_args

    assert parse_model_args("resnet", {"widths": "8,16", "blocks": "2", "batchnorm": "false"}) == \
        {"widths": (8, 16), "blocks": 2, "batchnorm": False}
    with pytest.raises(ConfigError, match="--model-arg widths must be a comma list of integers, got '8,x'"):
        parse_model_args("resnet", {"widths": "8,x"})
    with pytest.raises(ConfigError, match="--model-arg width: model resnet has no parameter 'width'; it takes widths"):
        parse_model_args("resnet", {"width": "8"})
    assert parse_model_args("torchvision:resnet18", {"zero_init_residual": "true"}) == {"zero_init_residual": True}


def test_a_constructor_that_refuses_its_arguments_is_one_config_error(in_fixtures):
    with pytest.raises(ConfigError, match=r"TinyNet could not be called with .*'width': -1.*RuntimeError.*--model-arg"):
        build_external("byo_nets:TinyNet", in_shape=(1, 8, 8), num_classes=10, width=-1)
