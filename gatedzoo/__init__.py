"""gatedzoo: gated and sigmoid-attention models for images, single cells, time series and network flows.

The three things users do::

    gatedzoo fit -c recipes/<family>/<recipe>.yaml              # train a recipe
    model = gatedzoo.create_model("<arch>.<tag>", pretrained=True)  # load zoo weights
    gatedzoo fit -c recipes/<family>/finetune_*.yaml            # fine-tune on your data
"""

from gatedzoo import kernels, layers, models  # noqa: F401  (importing models registers the architectures)
from gatedzoo.diagnostics import diagnose
from gatedzoo.kernels import attention
from gatedzoo.zoo import create_model, list_models, model_info, save_pretrained

__version__ = "0.1.0"

__all__ = ["attention", "create_model", "diagnose", "list_models", "model_info", "save_pretrained", "__version__"]
