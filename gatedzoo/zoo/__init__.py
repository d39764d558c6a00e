"""The zoo: architecture and weight registries, ``create_model``, ``save_pretrained``, shipped weights."""

from .pretrained import ZooMixin, cache_dir, create_model, load_weights, save_pretrained, zoo_config
from .registry import ArchInfo, PretrainedTag, get_arch, get_pretrained, list_models, model_info, register_model

__all__ = [
    "ArchInfo",
    "PretrainedTag",
    "ZooMixin",
    "cache_dir",
    "create_model",
    "get_arch",
    "get_pretrained",
    "list_models",
    "load_weights",
    "model_info",
    "register_model",
    "save_pretrained",
    "zoo_config",
]
