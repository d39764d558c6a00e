"""LightningModules: what each task optimises and logs, and the evaluators behind ``gatedzoo eval``."""

from . import flows, forecasting, images, masked_expression  # noqa: F401  (register their evaluators)
from .base import EVALUATORS, TEST_LOSS, TRAIN_LOSS, VAL_LOSS, EMAWeights, SaveZooWeights, ZooTask, register_evaluator
from .classification import TEST_ACC, VAL_ACC, Classification

__all__ = [
    "EVALUATORS",
    "TEST_ACC",
    "TEST_LOSS",
    "TRAIN_LOSS",
    "VAL_ACC",
    "VAL_LOSS",
    "Classification",
    "EMAWeights",
    "SaveZooWeights",
    "ZooTask",
    "register_evaluator",
]
