"""LightningModules: what each task optimises and logs, and the evaluators behind ``gatedzoo eval``."""

from .base import EVALUATORS, TEST_LOSS, TRAIN_LOSS, VAL_LOSS, SaveZooWeights, ZooTask, register_evaluator

__all__ = ["EVALUATORS", "TEST_LOSS", "TRAIN_LOSS", "VAL_LOSS", "SaveZooWeights", "ZooTask", "register_evaluator"]
from .classification import TEST_ACC, VAL_ACC, Classification  # noqa: E402

__all__ += ["Classification", "TEST_ACC", "VAL_ACC"]
