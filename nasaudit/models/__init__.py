"""Models: the genotype (DARTS) evaluation network and the manual baselines, in one registry."""

from nasaudit.models.base import ImageClassifier, Normalize, count_parameters
from nasaudit.models.registry import build_model, is_manual_model, list_models, register_model

__all__ = [
    "ImageClassifier",
    "Normalize",
    "build_model",
    "count_parameters",
    "is_manual_model",
    "list_models",
    "register_model",
]
