"""Networks to analyse: our ResNet classifier and autoencoder, plus external specs, behind one registry."""
from ibprobe.models.autoencoder import ResNetAEConfig, ResNetAutoencoder
from ibprobe.models.registry import MODEL_NAMES, build_model, model_arg_names, parse_model_args
from ibprobe.models.resnet import BasicBlock, ResNet, ResNetConfig
from ibprobe.models.rir import RiR, RiRConfig

__all__ = ["build_model", "MODEL_NAMES", "model_arg_names", "parse_model_args", "ResNet", "ResNetConfig",
           "ResNetAutoencoder", "ResNetAEConfig", "BasicBlock", "RiR", "RiRConfig"]
