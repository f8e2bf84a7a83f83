"""Models: a registry of plain ``nn.Module`` architectures (:func:`create_model`), masked
after construction, and tickets (a found subnetwork saved in a few bytes per kept weight).

The families register themselves on import: conv nets, ResNets, VGG, MobileNetV2.
"""
from . import convnets, mobilenet, resnets, vgg  # noqa: F401  (each registers its models)
from .registry import (ModelConfig, RandomNetwork, build_model, conv_linear_layers, create_model,
                       list_models, register_model)
from .tickets import TicketError, TicketRebuildError, load_ticket, read_ticket, resolve_ticket, save_ticket

__all__ = ["ModelConfig", "RandomNetwork", "build_model", "conv_linear_layers", "create_model",
           "list_models", "register_model", "TicketError", "TicketRebuildError", "load_ticket", "read_ticket",
           "resolve_ticket", "save_ticket"]
